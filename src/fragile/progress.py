"""A dependency-free progress bar with ETA on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """``Progress("eps 8")(done, total)`` redraws a bar; prints a newline when done == total."""

    def __init__(self, label: str, stream=None, width: int = 30):
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        frac = done / max(total, 1)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / frac - elapsed if frac > 0 else float("nan")
        bar = "#" * int(self.width * frac)
        self.stream.write(f"\r{self.label} [{bar:<{self.width}}] {done}/{total} ETA {eta:5.0f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()
