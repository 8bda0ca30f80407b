"""A dependency-free progress display with ETA on stderr.

On a terminal it redraws one bar in place (``\\r``); anywhere else (a log file, a pipe, CI) it writes a plain
line at most every ``every`` seconds, and always the last one, so a log gets no carriage-return spam.
"""

from __future__ import annotations

import sys
import time


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


class Progress:
    """``Progress("eps 8")(done, total)``: a bar on a terminal (newline when done == total), else a plain
    line per ``every`` seconds (default 30) and at the end."""

    def __init__(self, label: str, stream=None, width: int = 30, every: float = 30.0, terminal: bool | None = None):
        self.label, self.stream, self.width, self.every = label, stream or sys.stderr, width, float(every)
        self.terminal = _is_terminal(self.stream) if terminal is None else terminal
        self.start = time.perf_counter()
        self._last = None

    def __call__(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps with the elapsed time and an ETA extrapolated linearly; a closed or
        vanished stream is ignored.
        """
        frac = done / max(total, 1)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        try:
            if self.terminal:
                bar = "#" * int(self.width * frac)
                self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {done}/{total} ETA {eta:5.0f}s")
                if done >= total:
                    self.stream.write("\n")
            elif done >= total or self._last is None or elapsed - self._last >= self.every:
                self._last = elapsed
                self.stream.write(f"{self.label}: {done}/{total} ({100 * frac:.0f}%), {elapsed:.0f} s, "
                                  f"ETA {eta:.0f} s\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away, or the stream was closed
            pass
