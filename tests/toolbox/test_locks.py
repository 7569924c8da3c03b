"""One writer per directory: a second process is refused at once, naming the holder; a killed holder frees it."""
import pytest

from helpers import lock_held_elsewhere
from toolbox.io import atomic_write_json
from toolbox.locks import DirectoryLocked, DirLock

def test_second_writer_refused_naming_holder_and_freed_after_sigkill(tmp_path):
    with lock_held_elsewhere(tmp_path, "holder-test") as proc:       # SIGKILLed at the end of the block
        with pytest.raises(DirectoryLocked, match=rf"pid {proc.pid} .*holder-test"):
            DirLock(tmp_path).acquire()
    with DirLock(tmp_path):      # the OS dropped the dead holder's lock
        with DirLock(tmp_path):  # re-entrant within one process
            pass
    with DirLock(tmp_path):
        pass


def test_atomic_json_strict_writes_null_for_nonfinite(tmp_path):
    p = atomic_write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")]}, strict=True)
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.count("null") == 2
    assert [q.name for q in tmp_path.iterdir()] == ["m.json"]
