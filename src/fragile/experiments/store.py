"""The result store: a folder with an SQLite database (WAL mode) and compressed array files.

    STORE/results.sqlite   meta (schema version, resolved config, hash, package versions),
                           units (finished work units), results (one row per image x method x
                           attack x eps x defence x seed, every metric), faithfulness rows
    STORE/arrays/*.npz     perturbed inputs and maps of a unit, referenced from its rows
    STORE/.lock            held by the one writer (fcntl lock)

A snapshot (:func:`snapshot`, ``fragile results snapshot``) is the database alone, consistent, as one file
without the arrays (their references cleared): small enough to commit, so that a long sweep can span machines
and sessions. :func:`restore` (``fragile results restore``) makes a store folder from it; ``fragile run`` with
the same config then resumes after its finished units (their rows have no arrays; new units store theirs).

A unit is written in one transaction after its array file was written atomically (temporary file,
then rename), so a result is either fully stored or absent; ``kill -9`` loses only the unit in flight, and
the temporary files a killed writer leaves (``arrays/*.npz.<pid>.tmp``) are removed by the next writer once
it holds the lock. The lock is taken before anything slow (:func:`lock`, before the model is loaded). A full
disk, a read-only folder or a corrupt database is a one-line ``StoreError`` naming the path and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np

from fragile.errors import FragileError
from fragile.experiments.parts import save_npz_atomic


class StoreError(FragileError):
    """The result store cannot be read or written (disk full, read-only folder, corrupt database)."""


@contextlib.contextmanager
def storage(what: str, path):
    """Turn OSError / sqlite3 errors into a StoreError naming ``path`` and what to do."""
    try:
        yield
    except StoreError:
        raise
    except sqlite3.DatabaseError as err:
        raise StoreError(_advice(what, path, err)) from None
    except OSError as err:
        raise StoreError(_advice(what, path, err)) from None


def _advice(what: str, path, err) -> str:
    text = str(err) or type(err).__name__
    low = str(err.strerror if isinstance(err, OSError) else err).lower()  # not the path: it may say "full"
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "full" in low:
        todo = "free disk space and rerun (finished units are kept; the rerun resumes)"
    elif isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in low \
            or "read-only" in low:
        todo = "choose a folder you can write to (--store / -o / out=)"
    elif isinstance(err, FileNotFoundError):
        todo = "check the path (its folder must exist)"
    elif isinstance(err, sqlite3.DatabaseError) and ("not a database" in low or "malformed" in low):
        todo = "the database is damaged; move it away and use a new store folder (the rerun starts afresh)"
    elif isinstance(err, sqlite3.DatabaseError) and "locked" in low:
        todo = "another process holds the database; wait for it or use another store folder"
    else:
        todo = "check the folder and the disk"
    return f"cannot {what} {path}: {text}; {todo}"

#: 2: failed images have NaN metrics and a reason; rows record converged, surrogate beta, iterations and the
#: objective trajectory
SCHEMA_VERSION = 2
#: Seconds a writer waits for the lock of a store another writer holds.
LOCK_TIMEOUT = 10.0

_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (unit TEXT PRIMARY KEY, finished REAL NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    image INTEGER NOT NULL, image_id TEXT NOT NULL, method TEXT NOT NULL, attack TEXT NOT NULL,
    eps REAL NOT NULL, defence TEXT NOT NULL, seed INTEGER NOT NULL, unit TEXT NOT NULL,
    success INTEGER NOT NULL, label INTEGER NOT NULL, label_adv INTEGER NOT NULL,
    best_iteration INTEGER NOT NULL, steps INTEGER NOT NULL, seconds REAL NOT NULL,
    metrics TEXT NOT NULL, arrays TEXT, array_index INTEGER,
    reason TEXT, converged INTEGER, beta REAL, iterations INTEGER, trajectory TEXT,
    PRIMARY KEY (image, method, attack, eps, defence, seed));
CREATE TABLE IF NOT EXISTS faithfulness (
    image INTEGER NOT NULL, method TEXT NOT NULL, defence TEXT NOT NULL, unit TEXT NOT NULL,
    deletion_auc REAL NOT NULL, insertion_auc REAL NOT NULL, PRIMARY KEY (image, method, defence));
"""


def package_versions() -> dict[str, str]:
    """``{name: version}`` of fragile, torch and numpy (``'missing'`` for one not installed), kept in the store's meta."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fragile", "torch", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


class Store:
    """Open with :meth:`create_or_open` (writer, holds the lock) or :meth:`open` (reader)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int | None = None):
        self.path, self.conn, self._lock_fd = path, conn, lock_fd

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create_or_open(cls, path: str | Path, config: dict, config_hash: str, lock_timeout: float | None = None,
                       model_fingerprint: str | None = None, images_fingerprint: str | None = None,
                       lock_fd: int | None = None) -> Store:
        """The writer's store. ``lock_fd``: the lock already taken with :func:`lock` (else it is taken here)."""
        path = Path(path)
        if lock_fd is None:
            lock_fd = lock(path, lock_timeout)
        try:
            with storage("create the result store", path):
                (path / "arrays").mkdir(parents=True, exist_ok=True)
                remove_stale_temporaries(path)
                conn = _connect(path / "results.sqlite")
                with conn:
                    conn.executescript(_TABLES)
        except BaseException:
            _release(lock_fd)
            raise
        store = cls(path, conn, lock_fd)
        try:
            store._initialise(config, config_hash, model_fingerprint, images_fingerprint)
        except BaseException:
            store.close()
            raise
        return store

    def _initialise(self, config, config_hash, model_fingerprint, images_fingerprint) -> None:
        path, conn = self.path, self.conn
        store = self
        meta = store.meta()
        if not meta:
            with storage("write the result store", path), conn:
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("config", json.dumps(config, sort_keys=True)),
                    ("config_hash", config_hash), ("versions", json.dumps(package_versions())),
                    ("created", str(time.time()))])
        else:
            store._check_version(meta)
            if meta.get("config_hash") != config_hash:
                raise FragileError(f"store {path} holds results of another config (hash {meta.get('config_hash')}, "
                                   f"this config {config_hash}); use a new store folder (--store) or --new-store")
        # Fingerprints of what the config names only by a string: the model (experiments.parts.model_fingerprint:
        # structure + weight values; a changed weights file or checkpoint) and the images (their ids and pixel
        # values; a replaced image folder, or an image spec whose meaning changed). A resume with either changed
        # is refused; a store created before a fingerprint was kept records it now.
        for what, value in (("model", model_fingerprint), ("images", images_fingerprint)):
            if value is None:
                continue
            stored = store.meta().get(f"{what}_fingerprint")
            if stored is None:
                with storage("write the result store", path), conn:
                    conn.execute("INSERT INTO meta VALUES (?, ?)", (f"{what}_fingerprint", value))
            elif stored != value:
                raise FragileError(f"store {path} holds results of other {what} (fingerprint {stored}, now {value}: "
                                   f"the config names the same {what} but its contents changed); "
                                   "use a new store folder (--store) or --new-store")

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """A reader of the store at ``path``: read-only, no lock; :class:`FragileError` when it is not a store or has
        another schema version.
        """
        path = Path(path)
        db = path / "results.sqlite"
        if not db.is_file():
            raise FragileError(f"{path} is not a fragile result store (no results.sqlite)")
        with storage("open the result store", path):
            store = cls(path, _connect(db, write=False))
        try:
            with storage("read the result store", path):
                meta = dict(store.conn.execute("SELECT key, value FROM meta"))
            store._check_version(meta)
        except BaseException:
            store.close()
            raise
        return store

    def _check_version(self, meta: dict) -> None:
        version = meta.get("schema_version")
        if version != str(SCHEMA_VERSION):
            raise FragileError(f"store {self.path} has schema version {version}; this fragile reads version "
                               f"{SCHEMA_VERSION} (created by an incompatible version)")

    def close(self) -> None:
        """Close the database and release the writer's lock (if held)."""
        self.conn.close()
        if self._lock_fd is not None:
            _release(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def meta(self) -> dict:
        """The meta table as ``{key: value}`` strings (schema version, config, hash, versions, fingerprints); ``{}`` for an empty store."""
        try:
            return dict(self.conn.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError as err:
            if "no such table" in str(err):
                return {}
            raise StoreError(_advice("read the result store", self.path, err)) from None
        except sqlite3.DatabaseError as err:
            raise StoreError(_advice("read the result store", self.path, err)) from None

    def config(self) -> dict:
        """The resolved config the store was created with."""
        return json.loads(self.meta()["config"])

    def done_units(self) -> set[str]:
        """The keys of the finished units (see :attr:`fragile.experiments.runner.Unit.key`)."""
        with storage("read the result store", self.path):
            return {u for (u,) in self.conn.execute("SELECT unit FROM units")}

    def unit_seconds(self) -> float:
        """The seconds the finished units took, summed (the run's compute time, without resumes' restarts)."""
        with storage("read the result store", self.path):
            return float(self.conn.execute("SELECT COALESCE(SUM(seconds), 0) FROM units").fetchone()[0])

    def rows(self, table: str = "results") -> list[dict]:
        """Every row of ``table`` (``'results'`` or ``'faithfulness'``) in insertion order, as dicts: the metrics spread
        into the row (NaN for failed images), ``trajectory`` and a ``beta`` schedule decoded from JSON.
        """
        if table not in ("results", "faithfulness"):
            raise FragileError(f"unknown table {table!r}")
        with storage("read the result store", self.path):
            return self._rows(table)

    def _rows(self, table: str) -> list[dict]:
        cur = self.conn.execute(f"SELECT * FROM {table} ORDER BY rowid")  # noqa: S608 (fixed names)
        names = [d[0] for d in cur.description]
        out = []
        for values in cur:
            row = dict(zip(names, values))
            if "metrics" in row:
                row.update(json.loads(row.pop("metrics")))  # NaN for the metrics of failed images
            if row.get("trajectory") is not None:
                row["trajectory"] = json.loads(row["trajectory"])
            if isinstance(row.get("beta"), str):  # a (start, end) schedule
                row["beta"] = json.loads(row["beta"])
            out.append(row)
        return out

    def dataframe(self, table: str = "results"):
        """The rows of ``table`` (see :meth:`rows`) as a pandas ``DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.rows(table))

    def arrays(self, row: dict) -> dict[str, np.ndarray]:
        """The stored arrays (x, x_adv, maps, maps_adv) of one result row."""
        if not row.get("arrays"):
            raise FragileError("this result has no stored arrays (store_arrays: false)")
        path = self.path / "arrays" / row["arrays"]
        try:
            with np.load(path) as data:
                return {k: data[k][row["array_index"]] for k in data.files}
        except (OSError, ValueError, EOFError, KeyError, IndexError) as err:
            raise StoreError(f"cannot read the arrays {path}: {err}; the file is missing or damaged (rerun the sweep "
                             "in a new store folder to recompute them)") from None

    # -- writing ------------------------------------------------------------------------------
    def write_unit(self, unit: str, rows: list[dict], arrays: dict[str, np.ndarray] | None, seconds: float,
                   table: str = "results") -> None:
        """Store a finished unit atomically: its array file, then all rows + the unit mark in one transaction."""
        with storage("write to the result store", self.path):
            self._write_unit(unit, rows, arrays, seconds, table)

    def _write_unit(self, unit, rows, arrays, seconds, table) -> None:
        fname = None
        if arrays:
            fname = hashlib.sha1(unit.encode()).hexdigest()[:20] + ".npz"
            save_npz_atomic(self.path / "arrays" / fname, arrays)
        with self.conn:
            if table == "results":
                self.conn.executemany(
                    "INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    [(r["image"], r["image_id"], r["method"], r["attack"], r["eps"], r["defence"], r["seed"], unit,
                      int(r["success"]), r["label"], r["label_adv"], r["best_iteration"], r["steps"], r["seconds"],
                      json.dumps(r["metrics"]), fname, i if fname else None, r.get("reason"),
                      None if r.get("converged") is None else int(r["converged"]), _beta_cell(r.get("beta")), r.get("iterations"),
                      None if r.get("trajectory") is None else json.dumps(r["trajectory"]))
                     for i, r in enumerate(rows)])
            else:
                self.conn.executemany("INSERT OR REPLACE INTO faithfulness VALUES (?,?,?,?,?,?)",
                                      [(r["image"], r["method"], r["defence"], unit, r["deletion_auc"],
                                        r["insertion_auc"]) for r in rows])
            self.conn.execute("INSERT OR REPLACE INTO units VALUES (?, ?, ?)", (unit, time.time(), seconds))

    def export(self, out: str | Path, fmt: str = "csv") -> Path:
        """Write the results table as CSV or Parquet (metrics as columns)."""
        out = Path(out)
        if fmt not in ("csv", "parquet"):
            raise FragileError(f"unknown export format {fmt!r}; choose csv or parquet")
        with storage("write the export", out):
            return self._export(out, fmt)

    def _export(self, out: Path, fmt: str) -> Path:
        if fmt == "csv":
            import csv

            rows = self.rows()
            names = sorted({k for r in rows for k in r}, key=lambda k: (k not in rows[0], k)) if rows else []
            with open(out, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=names)
                writer.writeheader()
                writer.writerows(rows)
            return out
        if fmt == "parquet":
            try:
                self.dataframe().to_parquet(out)
            except ImportError as err:
                raise FragileError(f"parquet export needs pandas and pyarrow (pip install 'fragile[store]'): {err}") from None
            return out
        raise FragileError(f"unknown export format {fmt!r}; choose csv or parquet")


def snapshot(store_path: str | Path, out: str | Path) -> Path:
    """Write the database of the store at ``store_path`` (meta, finished units, every row) to the single file
    ``out`` without the arrays: a consistent copy (SQLite ``VACUUM INTO``, safe while a writer runs), the rows'
    array references cleared, ``meta.snapshot_of`` / ``snapshot_time`` added. Written to a temporary file beside
    ``out`` and renamed at the end (an interrupted snapshot leaves nothing); refuses to overwrite ``out``."""
    out = Path(out)
    if out.exists():
        raise FragileError(f"{out} exists; give a new file name for the snapshot")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    try:
        with Store.open(store_path) as store, storage("write the snapshot", out):
            store.conn.execute("VACUUM INTO ?", (str(tmp),))
        with storage("write the snapshot", out):
            conn = sqlite3.connect(tmp)
            try:
                with conn:
                    conn.execute("UPDATE results SET arrays = NULL, array_index = NULL")
                    conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
                        ("snapshot_of", str(Path(store_path).resolve())), ("snapshot_time", str(time.time()))])
                conn.execute("VACUUM")
            finally:
                conn.close()
            os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def restore(snapshot_file: str | Path, store_path: str | Path) -> Path:
    """A store folder at ``store_path`` (new or without a store) from a :func:`snapshot` file; ``fragile run`` with
    the snapshot's config and ``--store store_path`` resumes after its finished units. Holds the writer's lock
    while it writes; refuses a folder that holds a store (or a store's leftover ``-wal`` / ``-shm`` files), a file
    that is not a fragile store database or one of another schema version."""
    snapshot_file, store_path = Path(snapshot_file), Path(store_path)
    if not snapshot_file.is_file():
        raise FragileError(f"snapshot {snapshot_file} is not a file")
    try:
        conn = sqlite3.connect(snapshot_file.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            conn.execute("SELECT unit FROM units LIMIT 1")
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        raise FragileError(f"{snapshot_file} is not a fragile store snapshot ({err})") from None
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise FragileError(f"snapshot {snapshot_file} has schema version {meta.get('schema_version')}; this fragile "
                           f"reads version {SCHEMA_VERSION}")
    fd = lock(store_path)
    try:
        present = [n for n in ("results.sqlite", "results.sqlite-wal", "results.sqlite-shm") if (store_path / n).exists()]
        if present:
            raise FragileError(f"{store_path} already holds a result store ({', '.join(present)}); restore into a new "
                               "folder")
        tmp = store_path / f"results.sqlite.{os.getpid()}.tmp"
        try:
            with storage("restore the result store", store_path):
                (store_path / "arrays").mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(snapshot_file.read_bytes())
                os.replace(tmp, store_path / "results.sqlite")
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        _release(fd)
    return store_path


def _beta_cell(beta):
    """The surrogate beta as stored: a number, NULL, or a (start, end) schedule as JSON text."""
    return json.dumps(list(beta)) if isinstance(beta, (list, tuple)) else beta


def _connect(db: Path, write: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(db, timeout=30)
    try:
        if write:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
        else:
            conn.execute("PRAGMA schema_version").fetchone()  # reads the header: a damaged file fails here
    except BaseException:
        conn.close()
        raise
    return conn


def lock(path: str | Path, timeout: float | None = None) -> int:
    """Take the writer's lock of the store folder ``path`` (creating the folder); returns its descriptor for
    ``Store.create_or_open(..., lock_fd=)``. Refused (StoreError) when another writer still holds it after
    ``timeout`` seconds (default ``LOCK_TIMEOUT``)."""
    path = Path(path)
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    with storage("create the result store", path):
        path.mkdir(parents=True, exist_ok=True)
        return _acquire_lock(path / ".lock", timeout)


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the half-written ``arrays/*.<pid>.tmp`` files a killed writer left; call with the lock held."""
    stale = sorted((Path(path) / "arrays").glob("*.tmp"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _acquire_lock(path: Path, timeout: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        if time.monotonic() >= deadline:
            holder = os.pread(fd, 32, 0).decode(errors="replace") or "?"
            os.close(fd)
            raise StoreError(f"store {path.parent} is locked by another writer (pid {holder}); waited {timeout:.0f}s: "
                             "wait for it to finish or use another store folder")
        time.sleep(0.2)
