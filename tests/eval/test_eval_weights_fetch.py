"""`python -m eval.weights fetch`: against a local HTTP server (127.0.0.1) serving generated files — a good file,
a wrong hash (rejected, nothing left in the cache), a truncated transfer (resumed with Range), a 404, a zip archive
member, a mirror, and record-on-first-fetch verified by every later load."""
from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval import weights
from eval.weights import WeightFile


class Server:
    """Serves ``files`` (name -> bytes); honours ``Range: bytes=N-``; ``truncate_once`` names files whose first
    response announces the full length but stops after half of it (a dropped connection)."""

    def __init__(self, files: dict[str, bytes], truncate_once=()):
        self.files, self.truncate = dict(files), set(truncate_once)
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.lstrip("/").split("?")[0].split("/")[-1]
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if name not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data = outer.files[name]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if name in outer.truncate:
                    outer.truncate.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _blob(seed: int, n: int = 300_000) -> bytes:
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Test entries (files under tmp_path/cache via their env variables) in place of the real registry."""
    monkeypatch.setenv("PORTRAITLAB_CACHE", str(tmp_path / "plcache"))
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)
    entries = {}

    def add(name, url, sha256=None, prefix=None, member=None, filename=None):
        env = f"PL_TEST_{name.upper()}"
        monkeypatch.setenv(env, str(tmp_path / "cache" / (filename or member or name + ".bin")))
        entries[name] = WeightFile(name=name, filename=filename or member or name + ".bin", cache="torch_hub",
                                   url=url, env=env, sha256=sha256, sha256_prefix=prefix, archive_member=member)
        return entries[name]

    monkeypatch.setattr(weights, "REGISTRY", entries)
    return add


def _cache_files(tmp_path) -> list[str]:
    d = tmp_path / "cache"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_fetch_good_wrong_hash_truncated_and_404(tmp_path, registry, capsys):
    good, bad, trunc = _blob(1), _blob(2), _blob(3, 1_000_000)
    with Server({"good.bin": good, "bad.bin": bad, "trunc.bin": trunc}, truncate_once={"trunc.bin"}) as srv:
        registry("good", f"{srv.url}/good.bin", sha256=_sha(good))
        registry("bad", f"{srv.url}/bad.bin", sha256=_sha(b"something else"))
        registry("trunc", f"{srv.url}/trunc.bin", prefix=_sha(trunc)[:8])
        registry("gone", f"{srv.url}/gone.bin", sha256="0" * 64)
        rc = weights.main(["fetch", "--all"])
        out = capsys.readouterr().out
    assert rc == 1                                                     # some failed: non-zero exit
    assert (tmp_path / "cache" / "good.bin").read_bytes() == good
    # wrong hash: rejected with the two hashes named, and nothing of it left in the cache (no file, no .part)
    assert "bad" in out and f"does not match the expected {_sha(b'something else')}" in out
    assert not any(n.startswith("bad") or n.startswith(".bad") for n in _cache_files(tmp_path))
    # truncated transfer: resumed from where it stopped with a Range request, and complete
    assert (tmp_path / "cache" / "trunc.bin").read_bytes() == trunc
    ranges = [r for p, r in srv.requests if p.endswith("trunc.bin")]
    assert ranges[0] is None and ranges[1] == f"bytes={len(trunc) // 2}-"
    # prefix entry: full sha256 recorded on first fetch
    assert weights.recorded_sha256("trunc") == _sha(trunc)
    # 404: a clear per-entry error; the others still fetched
    assert "gone" in out and "HTTP 404" in out and "3/4" not in out and "2/4 fetched or present" in out
    assert not any("gone" in n for n in _cache_files(tmp_path))
    # check reports them present
    assert weights.main(["check"]) == 0
    listing = capsys.readouterr().out
    assert "present  good" in listing and "present  trunc" in listing and "ABSENT   bad" in listing


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, registry):
    data = _blob(4)
    with Server({"w.bin": data}) as srv:
        w = registry("w", f"{srv.url}/w.bin", sha256=_sha(data))
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / ".w.bin.part").write_bytes(data[:123_456])      # a killed earlier fetch
        weights.fetch_one("w", progress=False)
    assert w.path().read_bytes() == data and srv.requests[0][1] == "bytes=123456-"
    assert _cache_files(tmp_path) == ["w.bin"]


def test_mirror_and_record_on_first_fetch_verified_by_later_loads(tmp_path, registry, monkeypatch):
    data = _blob(5)
    with Server({"model.onnx": data}) as srv:
        # the registered URL is unreachable; the mirror serves the same file name
        w = registry("rec", "http://127.0.0.1:9/nowhere/model.onnx", filename="model.onnx")
        monkeypatch.setenv(weights.MIRROR_ENV, srv.url + "/")
        weights.fetch_one("rec", progress=False)
    assert w.path().read_bytes() == data and weights.integrity(w) == "recorded"
    assert weights.recorded_sha256("rec") == _sha(data)
    assert weights.resolve("rec") == w.path()
    w.path().write_bytes(data[:-1] + b"\x00")                          # the file changes later
    with pytest.raises(ValueError, match="recorded when it was first fetched"):
        weights.resolve("rec")


def test_zip_archive_members(tmp_path, registry):
    a, b = _blob(6, 5000), _blob(7, 7000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pack/a.onnx", a)
        zf.writestr("pack/b.onnx", b)
    with Server({"pack.zip": buf.getvalue()}) as srv:
        registry("a", f"{srv.url}/pack.zip", member="a.onnx")
        registry("b", f"{srv.url}/pack.zip", member="b.onnx", sha256=_sha(b))
        assert weights.fetch(["a", "b"], progress=False) == {"a": None, "b": None}
    assert (tmp_path / "cache" / "a.onnx").read_bytes() == a and (tmp_path / "cache" / "b.onnx").read_bytes() == b
    assert _cache_files(tmp_path) == ["a.onnx", "b.onnx"]                 # the archive is not left behind
    assert weights.recorded_sha256("a") == _sha(a)
