"""``fragile results snapshot`` / ``restore``: a store's database without its arrays, as one file to commit, and a
store folder made from it that ``fragile run`` resumes (long sweeps that span sessions)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import pytest

from fragile.errors import FragileError
from fragile.experiments import config as config_mod
from fragile.experiments.runner import run_sweep
from fragile.experiments.store import Store, restore, snapshot
from fragile.reporting.html import build_report

SMALL = {"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 4, "methods": ["gradient"],
         "attacks": ["random_sign", "topk"], "eps": [8], "batch_size": 2, "attack_settings": {"steps": 2},
         "threads": 1}
QUIET = {"show_progress": False, "log": lambda *a: None}


@pytest.fixture(scope="module")
def half_done(tmp_path_factory):
    """A finished small sweep: its store, its config and the counts of its run."""
    root = tmp_path_factory.mktemp("snap")
    full = config_mod.resolve(SMALL)
    counts = run_sweep(full, root / "store", **QUIET)
    return root, full, counts


def test_snapshot_restore_resume(half_done, tmp_path):
    root, full, counts = half_done
    snap = snapshot(root / "store", tmp_path / "r.sqlite")
    with Store.open(root / "store") as original:
        rows, units = original.rows(), original.done_units()
    assert any(r["arrays"] for r in rows)  # the original has arrays; the snapshot has none
    restored = restore(snap, tmp_path / "again")
    with Store.open(restored) as store:
        again = store.rows()
        assert store.done_units() == units
        assert store.meta()["config_hash"] == Store.open(root / "store").meta()["config_hash"]
        assert store.meta()["snapshot_of"].endswith("store")
    assert len(again) == len(rows) and all(r["arrays"] is None and r["array_index"] is None for r in again)
    strip = ("arrays", "array_index")
    assert [{k: v for k, v in r.items() if k not in strip} for r in again] == \
        [{k: v for k, v in r.items() if k not in strip} for r in rows]
    # the same config resumes after every finished unit: nothing to run
    resumed = run_sweep(full, restored, **QUIET)
    assert resumed["ran"] == 0 and resumed["done_before"] == counts["units"]
    # a report of the restored store builds (no example panels without arrays)
    assert build_report(str(restored), tmp_path / "r.html").exists()


def test_restored_store_runs_the_units_left(half_done, tmp_path):
    """A snapshot of a store where some units are missing: the resumed run computes exactly those."""
    root, full, counts = half_done
    snap = snapshot(root / "store", tmp_path / "r.sqlite")
    conn = sqlite3.connect(snap)
    with conn:
        (unit,) = conn.execute("SELECT unit FROM units ORDER BY rowid DESC LIMIT 1").fetchone()
        conn.execute("DELETE FROM units WHERE unit = ?", (unit,))
        conn.execute("DELETE FROM results WHERE unit = ?", (unit,))
    conn.close()
    restored = restore(snap, tmp_path / "again")
    resumed = run_sweep(full, restored, **QUIET)
    assert resumed["ran"] == 1 and resumed["done_before"] == counts["units"] - 1
    with Store.open(restored) as store:
        new = [r for r in store.rows() if r["unit"] == unit]
    assert new and all(r["arrays"] for r in new)  # the new unit stores its arrays


def test_snapshot_and_restore_refuse_bad_paths(half_done, tmp_path):
    root, _, _ = half_done
    snap = snapshot(root / "store", tmp_path / "r.sqlite")
    with pytest.raises(FragileError, match="exists; give a new file name"):
        snapshot(root / "store", snap)
    with pytest.raises(FragileError, match="not a fragile result store"):
        snapshot(tmp_path / "nothing", tmp_path / "x.sqlite")
    with pytest.raises(FragileError, match="already holds a result store"):
        restore(snap, root / "store")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(FragileError, match="not a fragile store snapshot"):
        restore(junk, tmp_path / "j")
    with pytest.raises(FragileError, match="is not a file"):
        restore(tmp_path / "missing.sqlite", tmp_path / "m")


def test_cli_snapshot_and_restore(half_done, tmp_path):
    root, _, _ = half_done
    out = subprocess.run([sys.executable, "-m", "fragile", "results", "snapshot", str(root / "store"), "-o",
                          str(tmp_path / "s.sqlite")], capture_output=True, text=True)
    assert out.returncode == 0 and "no arrays" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fragile", "results", "restore", str(tmp_path / "s.sqlite"),
                          str(tmp_path / "st")], capture_output=True, text=True)
    assert out.returncode == 0 and "finished units" in out.stdout
    out = subprocess.run([sys.executable, "-m", "fragile", "results", "restore", str(tmp_path / "s.sqlite"),
                          str(tmp_path / "st")], capture_output=True, text=True)
    assert out.returncode != 0 and "already holds a result store" in out.stderr and "Traceback" not in out.stderr


def test_summary_of_a_restored_store_says_it_is_partial_and_what_it_ran(half_done, tmp_path):
    """A store without experiment.json (restored, or a run still going): the summary says it is partial, names the
    config's model, images and attack settings, and gives the iterations of every row group."""
    from fragile.reporting.summary import summarize

    root, full, counts = half_done
    restored = restore(snapshot(root / "store", tmp_path / "r.sqlite"), tmp_path / "again")
    text = summarize(restored)
    assert f"**A partial store** ({counts['units']} finished units" in text
    assert "model resnet20_cifar10, images foolbox:cifar10" in text and "steps 2" in text
    header = next(line for line in text.splitlines() if line.startswith("| method | attack | eps | ok |"))
    assert "| iterations |" in header
    topk_row = next(line for line in text.splitlines() if line.startswith("| gradient | topk"))
    assert topk_row.split(" | ")[4] == "2"  # 2 iterations, as configured


def test_snapshot_is_consistent_while_a_writer_has_a_transaction_open(half_done, tmp_path):
    """A snapshot taken while the writer is inside an uncommitted transaction holds the committed units only."""
    import shutil

    root, full, counts = half_done
    shutil.copytree(root / "store", tmp_path / "live")
    conn = sqlite3.connect(tmp_path / "live" / "results.sqlite")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("BEGIN")
    conn.execute("INSERT INTO units VALUES ('half-written', 0, 0)")
    snap = snapshot(tmp_path / "live", tmp_path / "s.sqlite")
    conn.execute("ROLLBACK")
    conn.close()
    with Store.open(restore(snap, tmp_path / "r")) as store:
        assert "half-written" not in store.done_units() and len(store.done_units()) == counts["units"]
    assert not list(tmp_path.glob("*.tmp"))


def test_restore_refuses_a_folder_with_leftover_wal_files(half_done, tmp_path):
    root, _, _ = half_done
    snap = snapshot(root / "store", tmp_path / "s.sqlite")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "results.sqlite-wal").write_bytes(b"x")
    with pytest.raises(FragileError, match=r"already holds a result store \(results.sqlite-wal\)"):
        restore(snap, tmp_path / "f")
    odd = tmp_path / "a#b?c"
    odd.mkdir()
    copy = odd / "s.sqlite"
    copy.write_bytes(snap.read_bytes())
    with Store.open(restore(copy, tmp_path / "g")) as store:  # a path with URI characters
        assert store.done_units()
    assert sorted(p.name for p in odd.iterdir()) == ["s.sqlite"]  # nothing stray written beside it


def test_summary_names_the_second_order_rule_of_the_rows():
    from fragile.reporting.summary import second_order_note

    def row(rec):
        return {"trajectory": {"iterations": [0], "objective": [0.0], "second_order": rec}}

    assert second_order_note([row({"rule": "exact"}), {"trajectory": None}]) is None
    diff = {"rule": "difference", "rel_step": 1e-5, "cosine": 0.99991, "rechecks": 4, "recheck_cosine": 0.9991,
            "exact_from": None}
    text = second_order_note([row(diff), row({**diff, "exact_from": 50}), row({"rule": "exact",
                              "requested": "difference", "rel_step": 1e-4, "cosine": 0.31})])
    assert "for 2 of 3 rows" in text and "clean images 0.9999" in text and "at the rechecks 0.9991" in text
    assert "1 rows switched to the exact gradient" in text and "1 rows ran exactly" in text and "0.310" in text
