"""Resumable pieces of a long, non-sweep computation (geometry, faithfulness).

A sweep stores one row per unit in the SQLite store; analyses that reduce over all images (angle
histograms, deletion curves) instead store each finished piece -- a chunk of images, one method -- as an
``.npz`` file written atomically (temporary file, fsync, rename) under ``parts/<key>/``. The key hashes
the settings together with fingerprints of the model's weights and of the images, so a rerun with the
same inputs reuses every finished piece and a run with other inputs never mixes with it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-1 over the dtypes, shapes and values (as float64 on the CPU) of the given tensors."""
    h = hashlib.sha1()
    for t in tensors:
        a = t.detach().to("cpu", torch.float64).contiguous().numpy()
        h.update(f"{t.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def key_of(obj) -> str:
    """A short, file-name-safe hash of a JSON-serialisable description (method + parameters, ...)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model: its printed structure (modules, activations and their settings), input
    bounds, and the names, shapes and values of its parameters and buffers."""
    state = model.state_dict()
    names = ",".join(f"{k}{tuple(v.shape)}" for k, v in state.items())
    described = f"{model!r}|{getattr(model, 'bounds', None)}|{names}".encode()
    return hashlib.sha1(described).hexdigest()[:8] + fingerprint(*[v for v in state.values() if v.is_floating_point()])


def write_atomic(path: Path, write: Callable) -> None:
    """Write ``path`` so that a kill leaves either the whole file or none: ``write(fh)`` fills a temporary
    file ``<name>.<pid>.tmp`` beside it (binary), which is fsynced and renamed onto ``path``. A kill -9
    leaves the temporary file: ``remove_stale_temps`` deletes it on the next open."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written stays behind
        raise


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` atomically (``write_atomic``)."""
    write_atomic(path, lambda fh: np.savez_compressed(fh, **arrays))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def remove_stale_temps(folder: Path) -> int:
    """Delete the ``*.<pid>.tmp`` files in ``folder`` whose writing process is gone (killed before its
    rename); a live writer's temporary file is left alone. Returns how many were removed."""
    removed = 0
    for tmp in Path(folder).glob("*.tmp"):
        pid = tmp.suffixes[-2][1:] if len(tmp.suffixes) >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


class Parts:
    """``Parts(out, settings).get(name, compute)`` returns the stored arrays of piece ``name`` or computes,
    stores and returns them. ``compute()`` returns a dict of tensors or arrays; ``computed`` counts the
    pieces this instance computed (the rest were reused)."""

    def __init__(self, out: str | Path, settings: dict):
        self.dir = Path(out) / "parts" / key_of(settings)
        self.dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.dir)
        (self.dir / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True, default=str))
        self.computed = 0
        self.reused = 0

    def get(self, name: str, compute: Callable[[], dict]) -> dict[str, np.ndarray]:
        """The arrays of piece ``name``: read from ``<dir>/<name>.npz`` when it is there (counted in ``reused``), else
        ``compute()``'s dict of tensors or arrays as numpy arrays on the CPU, written atomically first (counted in
        ``computed``).
        """
        path = self.dir / f"{name}.npz"
        if path.exists():
            self.reused += 1
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        arrays = {k: v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)
                  for k, v in compute().items()}
        save_npz_atomic(path, arrays)
        self.computed += 1
        return arrays

    def get_json(self, name: str, compute: Callable[[], dict]) -> dict:
        """The same for a JSON-serialisable result (written to a temporary file, then renamed)."""
        path = self.dir / f"{name}.json"
        if path.exists():
            self.reused += 1
            return json.loads(path.read_text())
        text = json.dumps(compute(), indent=1)
        write_atomic(path, lambda fh: fh.write(text.encode()))
        self.computed += 1
        return json.loads(path.read_text())
