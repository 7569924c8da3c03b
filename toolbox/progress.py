"""Progress for every long job, on a terminal and in logs.

On a TTY a tqdm bar; when stdout is not a TTY (SLURM, ``| tee``, CI) periodic plain lines instead, which a log keeps:

    [progress] eval synthfaces_self: 12/40 videos (30%) | 1.52 videos/s | elapsed 0:00:08 | ETA 0:00:18

one at the first step, then at most every ``every_s`` seconds (``$PORTRAITLAB_PROGRESS_EVERY``, default 30), and one
when the job ends. ``$PORTRAITLAB_PROGRESS`` forces ``bar`` / ``lines`` / ``off``.

    from toolbox.progress import Progress, track
    for item in track(items, desc="render", unit="clip"): ...
    with Progress(total=n, desc="eval", unit="video", initial=done) as p: ... p.update()

``lightning_progress_bar()`` is the same for a Lightning Trainer (lines with step/total, loss, rate, ETA).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator, Optional, TextIO

PREFIX = "[progress]"


def _hms(seconds: float) -> str:
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_line(desc: str, done: int, total: Optional[int], elapsed: float, unit: str = "it",
                rate_done: Optional[int] = None, extra: str = "") -> str:
    """``desc: done/total unit (pct) | rate unit/s | elapsed h:mm:ss | ETA h:mm:ss`` (ETA from the rate so far).
    ``rate_done``: how many of ``done`` were done in ``elapsed`` (a resumed job starts above 0)."""
    rate_done = done if rate_done is None else rate_done
    rate = rate_done / elapsed if elapsed > 0 else float("nan")
    if total:
        head = f"{desc}: {done}/{total} {unit} ({100.0 * done / total:.0f}%)"
        eta = (total - done) / rate if rate and rate == rate and rate > 0 else float("nan")
        tail = f" | elapsed {_hms(elapsed)} | ETA {_hms(eta) if done < total else '0:00:00'}"
    else:
        head, tail = f"{desc}: {done} {unit}", f" | elapsed {_hms(elapsed)}"
    if rate != rate:
        speed = f"? {unit}/s"
    elif rate >= 1 or rate == 0:
        speed = f"{rate:.3g} {unit}/s"
    else:
        speed = f"{1 / rate:.3g} s/{unit[:-1] if unit.endswith('s') and len(unit) > 1 else unit}"
    return f"{PREFIX} {head} | {speed}" + (f" | {extra}" if extra else "") + tail


def mode_for(stream: TextIO) -> str:
    """``bar`` on a TTY, else ``lines``; ``$PORTRAITLAB_PROGRESS`` (bar / lines / off) overrides."""
    forced = os.environ.get("PORTRAITLAB_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def default_every_s() -> float:
    try:
        return float(os.environ.get("PORTRAITLAB_PROGRESS_EVERY", "30"))
    except ValueError:
        return 30.0


class Progress:
    """A progress display: a tqdm bar on a TTY, periodic plain lines otherwise (see the module docstring)."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", initial: int = 0,
                 every_s: Optional[float] = None, stream: Optional[TextIO] = None, enabled: bool = True,
                 mode: Optional[str] = None, leave: bool = True):
        self.total, self.desc, self.unit = (int(total) if total is not None else None), desc, unit
        self.done = self.initial = int(initial)
        self.every_s = default_every_s() if every_s is None else float(every_s)
        self.stream = stream or sys.stdout
        self.mode = "off" if not enabled else (mode or mode_for(self.stream))
        self.start = time.monotonic()
        self._last_print: Optional[float] = None
        self._printed_done = -1
        self._closed = False
        self.extra = ""
        self._bar = None
        if self.mode == "bar":
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, initial=self.initial, file=self.stream,
                             leave=leave, dynamic_ncols=True)

    def line(self) -> str:
        return format_line(self.desc, self.done, self.total, time.monotonic() - self.start, self.unit,
                           rate_done=self.done - self.initial, extra=self.extra)

    def _emit(self) -> None:
        print(self.line(), file=self.stream, flush=True)
        self._last_print = time.monotonic()
        self._printed_done = self.done

    def set_postfix(self, text: str) -> None:
        """Extra text in every line (e.g. ``loss 0.53``)."""
        self.extra = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            now = time.monotonic()
            if self._last_print is None or now - self._last_print >= self.every_s:
                self._emit()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines" and (self._last_print is None or self.done != self._printed_done):
            self._emit()   # the final state, unless the last line already showed it

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(iterable: Iterable, total: Optional[int] = None, desc: str = "", unit: str = "it", **kw: Any) -> Iterator:
    """Iterate with a ``Progress`` (total from ``len(iterable)`` when not given)."""
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total=total, desc=desc, unit=unit, **kw) as p:
        for item in iterable:
            yield item
            p.update()


def lightning_progress_bar(every_s: Optional[float] = None, stream: Optional[TextIO] = None):
    """A Lightning progress bar for logs: plain lines ``train: step k/N steps … | loss … | ETA``, plus one per
    validation run. Used by the Trainer when stdout is not a TTY (``RichProgressBar`` otherwise)."""
    from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

    class LineProgressBar(ProgressBar):
        def __init__(self):
            super().__init__()
            self._enabled = True
            self._p: Optional[Progress] = None

        def disable(self) -> None:
            self._enabled = False

        def enable(self) -> None:
            self._enabled = True

        def on_train_start(self, trainer, pl_module) -> None:
            total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
            self._p = Progress(total=total, desc="train", unit="steps", initial=int(trainer.global_step),
                               every_s=every_s, stream=stream, mode="lines", enabled=self._enabled)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if self._p is None:
                return
            metrics = self.get_metrics(trainer, pl_module)
            loss = next((metrics[k] for k in ("train/loss", "loss", "train_loss") if k in metrics), None)
            if loss is not None:
                self._p.set_postfix(f"loss {float(loss):.4g}")
            step = int(trainer.global_step)
            if step > self._p.done:
                self._p.update(step - self._p.done)

        def on_train_end(self, trainer, pl_module) -> None:
            if self._p is not None:
                self._p.close()

        def on_validation_end(self, trainer, pl_module) -> None:
            if self._enabled and not trainer.sanity_checking:
                print(f"{PREFIX} validation at step {trainer.global_step} done", file=stream or sys.stdout, flush=True)

    return LineProgressBar()
