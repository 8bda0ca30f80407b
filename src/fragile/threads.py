"""How many CPU threads torch may use: a policy that does not collapse when other processes compete.

Measured here (issue 17, 2 cores): 2 torch threads are 1.77x faster than 1 on a quiet machine but 5.9x *slower*
when other processes keep the cores busy (OpenMP threads spin and wait for each other). ``threads: auto`` (the
default of sweeps and audits) therefore takes the cores this process may run on (``os.sched_getaffinity``)
minus those other processes keep busy (the 1-minute load average, rounded down), at least 1; a number is used
as given. Process-level parallelism (Ray workers) gets 1 thread per worker. A library call that sets the threads (a sweep,
an experiment) restores the caller's setting when it returns (:func:`restoring`): the count is process-wide state.
"""

from __future__ import annotations

import functools
import math
import os

import torch

from fragile.errors import FragileError


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; ``os.cpu_count()`` where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded down (0 where it is unknown)."""
    try:
        return int(math.floor(os.getloadavg()[0]))
    except (AttributeError, OSError):
        return 0


def choose_threads(requested: int | str | None = "auto") -> int:
    """Threads for torch: ``requested`` if a positive integer, else (``"auto"`` / None) the idle cores, >= 1."""
    if requested is None or requested == "auto":
        return max(1, available_cores() - busy_cores())
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise FragileError(f"threads must be a positive integer or 'auto', got {requested!r}")
    return requested


def apply_threads(requested: int | str | None = "auto") -> int:
    """Set torch's intra-op threads by :func:`choose_threads`; returns the number set."""
    n = choose_threads(requested)
    torch.set_num_threads(n)
    return n


def restoring(fn):
    """``fn``, with torch's intra-op thread count set back to the caller's when it returns or raises (``fn`` may set
    its own by :func:`apply_threads`)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return wrapper
