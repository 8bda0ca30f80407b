"""The thread policy (fragile.threads): idle cores by default, a given number as given, bad values refused."""

from __future__ import annotations

import pytest
import torch

import fragile.threads as threads
from fragile.errors import FragileError
from fragile.experiments import config as config_mod


@pytest.mark.parametrize(("cores", "load", "expected"), [(2, 0.1, 2), (2, 1.7, 1), (2, 5.0, 1), (16, 3.2, 13)])
def test_auto_takes_the_idle_cores(monkeypatch, cores, load, expected):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda _pid: set(range(cores)))
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    assert threads.choose_threads("auto") == threads.choose_threads(None) == expected


def test_unknown_load_and_affinity_fall_back(monkeypatch):
    def unavailable(*_):
        raise OSError("not here")

    monkeypatch.delattr(threads.os, "sched_getaffinity")
    monkeypatch.setattr(threads.os, "getloadavg", unavailable)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    assert threads.choose_threads() == 4


def test_a_number_is_used_as_given_and_bad_values_are_refused():
    before = torch.get_num_threads()
    try:
        assert threads.apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in (0, -1, 1.5, "two", True):
        with pytest.raises(FragileError, match="threads must be"):
            threads.choose_threads(bad)


def test_config_threads_auto_is_the_default_and_hashes_like_it():
    auto, default = config_mod.resolve({"threads": "auto"}), config_mod.resolve({})
    assert auto["threads"] is None and config_mod.config_hash(auto) == config_mod.config_hash(default)
    with pytest.raises(FragileError, match="threads"):
        config_mod.resolve({"threads": "many"})


def test_a_sweep_sets_its_threads_and_gives_the_callers_back(tmp_path):
    """``threads: 1`` holds inside the sweep; afterwards torch has the caller's count again (process-wide state)."""
    from fragile import attacks
    from fragile.experiments.runner import run_sweep

    seen = []
    real = attacks.run

    def recorded(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = config_mod.resolve({"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 2,
                                  "methods": ["gradient"], "attacks": ["topk"], "eps": [8], "batch_size": 2,
                                  "threads": 1, "attack_settings": {"steps": 1}})
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(attacks, "run", recorded)
            run_sweep(cfg, tmp_path / "s", show_progress=False, log=lambda *a: None)
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
