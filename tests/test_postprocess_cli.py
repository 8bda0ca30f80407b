"""Map post-processing against numpy, and the console entry point."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from fragile.errors import FragileError
from fragile.explanations import normalize_sum, reduce_channels, scale_01

H = torch.randn(3, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("how,ref", [
    ("abs_sum", lambda a: np.abs(a).sum(1)), ("sum", lambda a: a.sum(1)),
    ("max_abs", lambda a: np.abs(a).max(1)), ("l2", lambda a: np.sqrt((a ** 2).sum(1))),
])
def test_reduce_channels(how, ref):
    assert np.allclose(reduce_channels(H, how).numpy(), ref(H.numpy()))


def test_normalize_and_scale():
    m = reduce_channels(H)
    n = normalize_sum(m).numpy()
    assert np.allclose(n.reshape(3, -1).sum(1), 1.0)
    s = scale_01(m).numpy().reshape(3, -1)
    assert np.allclose(s.min(1), 0.0) and np.allclose(s.max(1), 1.0, atol=1e-9)
    with pytest.raises(FragileError, match="reduction"):
        reduce_channels(H, "median")


def test_console_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "fragile", "--help"], capture_output=True, text=True, check=True).stdout
    assert "demo" in out and "methods" in out
