"""One writer per directory: a second process is refused at once, naming the holder; a killed holder frees it."""
import os
import signal
import subprocess
import sys

import pytest

from toolbox.io import atomic_write_json
from toolbox.locks import DirectoryLocked, DirLock

HOLD = "import sys, time; from toolbox.locks import DirLock; l = DirLock(sys.argv[1], 'holder-test').acquire(); " \
       "print('held', flush=True); time.sleep(60)"


def _hold(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_naming_holder_and_freed_after_sigkill(tmp_path):
    proc = _hold(tmp_path)
    try:
        with pytest.raises(DirectoryLocked, match=rf"pid {proc.pid} .*holder-test"):
            DirLock(tmp_path).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
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
