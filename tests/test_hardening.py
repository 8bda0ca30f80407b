"""Issue 16.4-16.6: config values checked at load (key path in the message), storage errors as one line,
stale temporaries removed, the lock taken before the model is loaded, CLI hygiene."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from fragile.errors import FragileError
from fragile.experiments import config as config_mod
from fragile.experiments import store as store_mod
from fragile.experiments.runner import run_sweep
from fragile.experiments.store import Store, StoreError

BASE = {"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 2, "methods": ["gradient"],
        "attacks": ["random_sign"], "eps": [8], "attack_settings": {"steps": 1, "beta": 10.0}, "store_arrays": True}
QUIET = {"show_progress": False, "log": lambda *a: None}


@pytest.mark.parametrize("change,match", [
    ({"limit": 0}, "limit must be a positive integer"), ({"limit": -1}, "limit must be a positive integer"),
    ({"limit": 2.5}, "limit"), ({"limit": True}, "limit"), ({"limit": "x"}, "limit"),
    ({"images": "cifar10:-1"}, "images: .*positive integer"), ({"images": "cifar10:0"}, "images: .*positive integer"),
    ({"images": "cifar10:abc"}, "images: bad image spec"), ({"images": "foolbox:nope"}, "foolbox sample set"),
    ({"images": 5}, "images must be an image spec"), ({"model": 5}, "model must be"),
    ({"seeds": "abc"}, r"seeds\[0\]"), ({"seeds": [0, 1.5]}, r"seeds\[1\]"), ({"seeds": []}, "seeds"),
    ({"seeds": [1, 1]}, "twice"), ({"batch_size": "x"}, "batch_size"), ({"batch_size": 0}, "batch_size"),
    ({"threads": -1}, "threads"), ({"correct_only": "yes"}, "correct_only"), ({"store_arrays": 3}, "store_arrays"),
    ({"name": 5}, "name"), ({"eps": [8, "4"]}, r"eps\[1\]"), ({"eps": [float("nan")]}, "finite"),
    ({"eps": [300]}, "larger than the data range"), ({"eps": True}, "number"), ({"eps": []}, "eps"),
    ({"methods": 5}, "methods must be"), ({"methods": []}, "methods must be"), ({"attacks": []}, "attacks must be"),
    ({"methods": ["gradient", "gradient"]}, "twice"), ({"resize": "bogus"}, "resize"), ({"resize": 5}, "resize"),
    ({"attack_settings": {"steps": 0}}, "attack_settings.steps"), ({"attack_settings": {"step": "foo"}}, "step"),
    ({"attack_settings": {"norm": "l3"}}, "attack_settings.norm"), ({"attack_settings": {"beta": 0}}, "beta"),
    ({"attack_settings": {"reduce": "x"}}, "attack_settings.reduce"), ({"attack_settings": 3}, "attack_settings"),
    ({"methods": [{"name": "integrated_gradients", "stepz": 3}]},
     r"'stepz' for method 'integrated_gradients' in methods\[0\]; valid: .*steps"),
    ({"methods": [{"name": "smoothgrad", "method": "lrp", "rul": "z"}]}, r"'rul'.*valid: .*rule"),
    ({"attacks": [{"name": "topk", "kk": 3}]}, r"'kk' for attack 'topk' in attacks\[0\]; valid: k"),
    ({"attacks": [{"name": "topk", "k": 0}]}, r"attacks\[0\]: k must be"),
    ({"attacks": [{"name": "targeted"}]}, "region"), ({"attacks": [{"name": "targeted", "region": [4, 2, 0, 3]}]}, "region"),
    ({"attacks": [{"name": "manipulate", "map_weight": 0}]}, r"attacks\[0\]: map_weight"),
    ({"defences": [{"name": "none", "beta": 1}]}, r"'beta' for defence 'none' in defences\[0\]"),
    ({"defences": [{"name": "smoothgrad", "sample": 3}]}, "valid: .*samples"),
])
def test_config_values_are_refused_with_their_key(change, match):
    with pytest.raises(FragileError, match=match):
        config_mod.resolve({**BASE, **change})


def test_valid_configs_still_resolve():
    cfg = config_mod.resolve({**BASE, "methods": [{"name": "smoothgrad", "method": "lrp", "rule": "epsilon", "samples": 2},
                                                  {"name": "integrated_gradients", "data": "foolbox:cifar10",
                                                   "baseline": "pixel_mean"}],
                              "attacks": [{"name": "targeted", "region": [0, 8, 0, 8]}, "random_sign"],
                              "defences": ["none", {"name": "beta", "beta": 2.0}, {"name": "smoothgrad", "samples": 3}],
                              "seeds": 3, "limit": None, "threads": 1})
    assert cfg["seeds"] == [3] and cfg["limit"] is None


def test_method_values_are_checked_on_the_model_at_dry_run(tmp_path):
    bad = config_mod.resolve({**BASE, "methods": [{"name": "integrated_gradients", "steps": 0}]})
    with pytest.raises(FragileError, match=r"methods\[0\] \(integrated_gradients\(steps=0\)\).*steps"):
        run_sweep(bad, tmp_path / "s", dry_run=True, **QUIET)
    bad = config_mod.resolve({**BASE, "methods": [{"name": "grad_cam", "layer": "nope"}]})
    with pytest.raises(FragileError, match="no layer named"):
        run_sweep(bad, tmp_path / "s", **QUIET)
    assert not (tmp_path / "s" / "results.sqlite").exists()  # refused before the store was written


def test_non_sweep_kinds_check_their_keys(tmp_path):
    from fragile.experiments.kinds import run_named

    with pytest.raises(FragileError, match="unknown key 'iterz' in the geometry experiment"):
        run_named("ghorbani-fig6-angles", tmp_path / "g", overrides={"iterz": 3})
    with pytest.raises(FragileError, match="limit must be a positive integer"):
        run_named("ghorbani-fig6-angles", tmp_path / "g", overrides={"limit": -1})


def test_corrupt_database_is_one_clear_error(tmp_path):
    run_sweep(config_mod.resolve(BASE), tmp_path / "s", **QUIET)
    (tmp_path / "s" / "results.sqlite").write_bytes(b"this is not sqlite" * 100)
    for path in (tmp_path / "s" / "results.sqlite-wal", tmp_path / "s" / "results.sqlite-shm"):
        path.unlink(missing_ok=True)
    with pytest.raises(StoreError, match="damaged.*new store folder"):
        Store.open(tmp_path / "s")
    with pytest.raises(StoreError, match="results.sqlite|damaged"):
        run_sweep(config_mod.resolve(BASE), tmp_path / "s", **QUIET)


def test_disk_full_and_read_only_are_one_clear_error(tmp_path, monkeypatch):
    import fragile.experiments.store as store_module

    def full(path, arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "save_npz_atomic", full)
    with pytest.raises(StoreError, match="free disk space and rerun"):
        run_sweep(config_mod.resolve(BASE), tmp_path / "s", **QUIET)
    monkeypatch.undo()

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(store_module.Path, "mkdir", read_only)
    with pytest.raises(StoreError, match="Read-only.*a folder you can write to"):
        run_sweep(config_mod.resolve(BASE), tmp_path / "ro", **QUIET)


def test_sqlite_disk_full_is_one_clear_error(tmp_path, monkeypatch):
    c = config_mod.resolve(BASE)
    with Store.create_or_open(tmp_path / "s", c, config_mod.config_hash(c)) as store:
        store.conn.close()
        store.conn = _FullConnection()
        with pytest.raises(StoreError, match="database or disk is full.*free disk space"):
            store.write_unit("u", [], None, 0.0)


class _FullConnection:
    def __enter__(self):
        raise sqlite3.OperationalError("database or disk is full")

    def __exit__(self, *a):
        return False

    def close(self):
        pass


def test_stale_temporaries_are_removed_by_the_next_writer(tmp_path):
    c = config_mod.resolve(BASE)
    h = config_mod.config_hash(c)
    (tmp_path / "s" / "arrays").mkdir(parents=True)
    stale = tmp_path / "s" / "arrays" / "0123.npz.4242.tmp"
    stale.write_bytes(b"half")
    with Store.create_or_open(tmp_path / "s", c, h):
        assert not stale.exists()


def test_the_lock_is_taken_before_the_model_is_loaded(tmp_path, monkeypatch):
    import fragile.experiments.runner as runner

    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT", 0.3)
    loaded = []
    monkeypatch.setattr(runner, "load_model", lambda spec: loaded.append(spec))
    fd = store_mod.lock(tmp_path / "s")
    try:
        with pytest.raises(StoreError, match="locked by another writer"):
            run_sweep(config_mod.resolve(BASE), tmp_path / "s", **QUIET)
    finally:
        store_mod._release(fd)
    assert loaded == []


def test_report_into_a_missing_folder_and_export_errors(tmp_path, capsys):
    from fragile.cli import main

    run_sweep(config_mod.resolve(BASE), tmp_path / "s", **QUIET)
    assert main(["report", str(tmp_path / "s"), "-o", str(tmp_path / "no" / "such" / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "no/such" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["results", "export", str(tmp_path / "s"), "-o", str(tmp_path / "no" / "r.csv")]) == 1
    assert "no/r.csv" in capsys.readouterr().err


def test_summarize_of_a_missing_folder_is_an_error(tmp_path, capsys):
    from fragile.cli import main

    assert main(["summarize", str(tmp_path / "nothing")]) == 1
    assert "nothing" in capsys.readouterr().err


def test_exit_codes(capsys):
    from fragile.cli import main

    assert main(["methods"]) == 0
    assert main(["run", "no-such-experiment"]) == 1  # an error
    with pytest.raises(SystemExit) as usage:
        main(["attack", "--limit", "0"])  # usage
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:
        main(["run", "--set", "limit"])
    assert usage.value.code == 2
    capsys.readouterr()


def test_a_broken_pipe_exits_quietly():
    import subprocess
    import sys

    code = ("import sys; from fragile.cli import main\n"
            "sys.stdout = open(sys.stdout.fileno(), 'w', buffering=1, closefd=False)\n"
            "sys.exit(main(['run', '--list']))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipe" not in err
    assert proc.returncode in (0, 141, 1)


def test_ctrl_c_ends_with_one_line_and_exit_130():
    """A real SIGINT during a (stand-in) `fragile run`: exit 130, one line saying the stored part stays and the same
    command resumes, no traceback; a command that stores nothing says it wrote no result."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time; import fragile.cli as cli\n"
            "def slow(args):\n    print('ready', flush=True); time.sleep(60)\n"
            "cli._cmd_{name} = slow\n"
            "sys.exit(cli.main({argv}))")
    for name, argv, expect in (("run", ["run", "ghorbani-fig3-cifar", "--store", "runs/x"],
                                "what had finished is stored in runs/x; run the same command again to resume after it"),
                               ("methods", ["methods"], "the command did not finish; no result was written")):
        proc = subprocess.Popen([sys.executable, "-c", code.format(name=name, argv=argv)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert b"Traceback" not in err and err.decode().strip() == f"fragile: interrupted: {expect}"


def test_progress_is_plain_lines_off_a_terminal():
    import io

    from fragile.progress import Progress

    out = io.StringIO()
    p = Progress("eps 8", stream=out, every=0.0)
    for i in range(1, 4):
        p(i, 3)
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") == 3 and "3/3" in text


def test_checkpoints_with_nan_weights_are_refused(tmp_path):
    import torch

    from fragile.models import load

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))
    net[1].weight.data[0, 0] = float("nan")
    torch.save(net.state_dict(), tmp_path / "w.pt")
    (tmp_path / "f.py").write_text("import torch\n"
                                   "def Net():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2))\n")
    with pytest.raises(FragileError, match=r"NaN or inf weights.*1\.weight'"):
        load(f"{tmp_path / 'f.py'}:Net", weights=str(tmp_path / "w.pt"))


def test_stale_temporary_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    import os
    import subprocess
    import sys

    from fragile.experiments.parts import Parts, remove_stale_temps

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        folder = Parts(tmp_path, {"a": 1}).dir
        dead = folder / "x.npz.999999999.tmp"
        mine = folder / f"y.npz.{os.getpid()}.tmp"  # this process is not writing it now: a leftover
        alive = folder / f"z.npz.{live.pid}.tmp"
        for p in (dead, mine, alive):
            p.write_bytes(b"half")
        assert remove_stale_temps(folder) == 2
        assert alive.exists() and not dead.exists() and not mine.exists()
        Parts(tmp_path, {"a": 1})  # the next open cleans the folder too
        assert alive.exists()
    finally:
        live.kill()
        live.wait()
    Parts(tmp_path, {"a": 1})
    assert not list(folder.glob("*.tmp"))


@pytest.mark.parametrize("wrap", ["tuple", "dict", "logits_attribute"])
def test_training_losses_accuracy_and_hessian_take_models_with_structured_outputs(wrap):
    """Every place that runs the model (regulariser losses, accuracy, the Hessian's score) goes through
    model_output: a model returning a tuple / dict / object with .logits gives the numbers of the plain one."""
    from types import SimpleNamespace

    import torch

    from fragile.defenses import regularizers
    from fragile.defenses.training import accuracy
    from fragile.geometry.hessian import top_hessian_eigen

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Softplus(), torch.nn.Linear(6, 3))
    shapes = {"tuple": lambda z: (z, z.detach()), "dict": lambda z: {"logits": z, "aux": 1},
              "logits_attribute": lambda z: SimpleNamespace(logits=z)}

    class Structured(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = plain

        def forward(self, x):
            return shapes[wrap](self.net(x))

    other = Structured()
    x, y = torch.rand(4, 3, 2, 2), torch.tensor([0, 1, 2, 0])
    for name in ("ce", "ssr", "pgd", "ig_norm", "lipschitz"):
        loss = regularizers.create(name, **({"steps": 2} if name in ("pgd", "ig_norm") else {}))
        (a, logs_a), (b, logs_b) = loss(other, x, y), loss(plain, x, y)
        assert torch.allclose(a, b) and logs_a == pytest.approx(logs_b), name
    assert accuracy(other, x, y) == accuracy(plain, x, y)
    a, b = top_hessian_eigen(other, x, beta=None, iters=5), top_hessian_eigen(plain, x, beta=None, iters=5)
    assert torch.allclose(a[0], b[0])
