"""One writer per directory: an OS file lock (`fcntl.flock`) held for the writer's lifetime.

The lock file `<dir>/.lock` records the holder (pid, host, command, start time); a second writer fails at once
with a message naming that holder. The OS releases the lock when the holder dies (SIGKILL included), so a killed
run never leaves a stale lock behind.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path


class DirectoryLocked(RuntimeError):
    """Another process is writing this directory."""


class DirLock:
    """Exclusive, non-blocking lock on `directory` (context manager; re-entrant within one process)."""

    _held: dict[str, "DirLock"] = {}

    def __init__(self, directory: str | os.PathLike, purpose: str = "writer"):
        self.directory = Path(directory).absolute()
        self.path = self.directory / ".lock"
        self.purpose = purpose
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> "DirLock":
        key = str(self.path)
        owner = DirLock._held.get(key)
        if owner is not None and owner is not self:
            owner._depth += 1
            self._fd, self._depth = -1, 1     # nested use in the same process: the outer lock covers it
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder()
            os.close(fd)
            raise DirectoryLocked(f"{self.directory} is being written by another process ({holder}); "
                                  f"wait for it to finish or use another directory") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "since": time.strftime("%Y-%m-%d %H:%M:%S"), "cmd": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd, self._depth = fd, 1
        DirLock._held[key] = self
        return self

    def holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "holder unknown"
        return f"pid {info.get('pid')} on {info.get('host')}, {info.get('purpose')}, since {info.get('since')}: " \
               f"{info.get('cmd', '')}"

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd == -1:
            owner = DirLock._held.get(str(self.path))
            if owner is not None:
                owner._depth -= 1
            self._fd = None
            return
        self._depth -= 1
        if self._depth > 0:
            return
        DirLock._held.pop(str(self.path), None)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
