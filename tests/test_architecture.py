"""The import graph obeys the data flow: datamodules → batch dict → lit_models → eval → tables, with the entry points
in experiments and toolbox as the neutral helper package.

Every ``import`` / ``from … import`` of every module is read with ``ast`` (inside functions, methods and
``if TYPE_CHECKING`` blocks too; relative imports resolved against the module's package), so a lazy import counts
like a top-level one. Forbidden edges:

* ``datamodules`` imports none of ``lit_models``, ``eval``, ``experiments``;
* ``lit_models`` imports none of ``datamodules``, ``eval``, ``experiments`` (models see batch dicts);
* ``eval`` never imports ``experiments`` (it may import ``lit_models`` and ``datamodules``);
* ``toolbox`` imports none of ``datamodules``, ``lit_models``, ``eval``, ``experiments``.

``PENDING`` is the allow-list of known edges still to be removed, as exact ``(file, imported module)`` pairs. It may
only shrink: an edge not in it fails the test (with file:line), and so does an entry whose edge is gone (remove it
from ``PENDING`` then).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PACKAGES = ("datamodules", "lit_models", "eval", "experiments", "toolbox")
FORBIDDEN = {
    "datamodules": {"lit_models", "eval", "experiments"},
    "lit_models": {"datamodules", "eval", "experiments"},
    "eval": {"experiments"},
    "toolbox": {"datamodules", "lit_models", "eval", "experiments"},
}

# allowed back-edges still to be removed: (file relative to the repo, imported module). Shrink only.
PENDING: set[tuple[str, str]] = set()   # empty: no back-edge is allowed


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path`` (module ``module``, e.g. ``eval.compare``), nested
    ones included. ``from pkg import name`` yields ``pkg`` and ``pkg.name`` (the name may be a submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):   # Python refuses it too: a relative import never leaves a package
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out.extend((node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*")
    return out


def top(name: str) -> str:
    return name.split(".", 1)[0]


def back_edges(root: Path, packages=PACKAGES, forbidden=FORBIDDEN) -> list[tuple[str, int, str]]:
    """(file relative to ``root``, line, imported module) of every forbidden import under ``root``'s packages.
    A ``from pkg import name`` line counts once (as ``pkg`` when ``pkg`` itself is forbidden)."""
    found: dict[tuple[str, int, str], None] = {}
    for pkg in packages:
        banned = forbidden.get(pkg, set())
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            module = ".".join(rel.with_suffix("").parts)
            module = module.removesuffix(".__init__")
            seen_lines: set[tuple[int, str]] = set()
            for line, name in imported_modules(path, module):
                if top(name) not in banned:
                    continue
                parent = name.rpartition(".")[0]
                if (line, parent) in seen_lines:      # `from eval.faces import DlibFaces`: report eval.faces only
                    continue
                seen_lines.add((line, name))
                found[(rel.as_posix(), line, name)] = None
    return list(found)


def problems(edges, pending=PENDING) -> list[str]:
    """Messages for edges not in ``pending`` (file:line) and for ``pending`` entries with no edge left."""
    new = [e for e in edges if (e[0], e[2]) not in pending]
    gone = sorted(p for p in pending if not any((e[0], e[2]) == p for e in edges))
    msg = []
    if new:
        msg.append("imports against the data flow (datamodules → lit_models → eval → experiments; toolbox imports "
                   "none of them):\n" + "\n".join(f"  {f}:{line}: imports {m}" for f, line, m in sorted(new)))
    if gone:
        msg.append("PENDING entries that no longer exist (remove them from tests/test_architecture.py):\n"
                   + "\n".join(f"  {f}: {m}" for f, m in gone))
    return msg


def test_no_back_edges_between_packages():
    msg = problems(back_edges(REPO))
    assert not msg, "\n".join(msg)


def test_pending_only_shrinks():
    """A new edge fails with its file:line; a PENDING entry whose edge is gone fails too."""
    edges = [("lit_models/a.py", 3, "eval.faces"), ("lit_models/b.py", 7, "datamodules")]
    assert problems(edges, {("lit_models/a.py", "eval.faces"), ("lit_models/b.py", "datamodules")}) == []
    (msg,) = problems(edges, {("lit_models/a.py", "eval.faces")})
    assert "lit_models/b.py:7: imports datamodules" in msg
    (msg,) = problems(edges[:1], {("lit_models/a.py", "eval.faces"), ("lit_models/b.py", "datamodules")})
    assert "no longer exist" in msg and "lit_models/b.py: datamodules" in msg


def _write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def test_checker_finds_lazy_relative_and_from_imports(tmp_path):
    """The checker itself: imports inside functions / branches / try blocks and `from pkg import submodule` are
    edges; relative imports resolve inside their package; allowed directions (eval → lit_models / datamodules,
    anything → toolbox) are not edges."""
    for pkg in PACKAGES:
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "lit_models/m/__init__.py", "")
    _write(tmp_path, "lit_models/m/diag.py",
           "import torch\nfrom toolbox.io import atomic_write_json\n\n"
           "def f():\n    from datamodules.synth import render\n    return render\n")
    _write(tmp_path, "lit_models/m/shim.py", "from eval import regions  # noqa\n")
    _write(tmp_path, "eval/cli.py", "from lit_models.registry import load_model\nimport datamodules\n"
                                    "class C:\n    def m(self):\n        import experiments.train as t\n")
    _write(tmp_path, "eval/ok.py", "from . import cli\nfrom .cli import C\n")
    _write(tmp_path, "datamodules/x.py", "if True:\n    import lit_models.base\n")
    _write(tmp_path, "lit_models/m/rel.py", "from ..registry import build_model\nfrom .diag import f\n")
    _write(tmp_path, "toolbox/io.py", "try:\n    import eval.metrics\nexcept ImportError:\n    pass\n")
    edges = sorted(back_edges(tmp_path))
    rel = imported_modules(tmp_path / "lit_models/m/rel.py", "lit_models.m.rel")
    assert (1, "lit_models.registry") in rel and (2, "lit_models.m.diag") in rel
    assert edges == [("datamodules/x.py", 2, "lit_models.base"),
                     ("eval/cli.py", 5, "experiments.train"),
                     ("lit_models/m/diag.py", 5, "datamodules.synth"),
                     ("lit_models/m/shim.py", 1, "eval"),
                     ("toolbox/io.py", 2, "eval.metrics")]


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_is_scanned(pkg):
    """A package folder that moved or emptied would make the rule vacuous."""
    assert len(list((REPO / pkg).rglob("*.py"))) >= 2, f"{pkg}/ has no modules to check"
