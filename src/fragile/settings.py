"""Where ``fragile`` finds real data and weights: one setting, ``FRAGILE_DATA``.

``FRAGILE_DATA`` (default ``../shared/data`` relative to the project checkout, else to the working
directory) holds the datasets; pretrained weights live in ``FRAGILE_MODELS``, by default the
``models`` folder beside it.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """The data folder: ``$FRAGILE_DATA`` if set, else ``../shared/data`` beside the project checkout or the working
    directory (the first that exists; the working directory's when neither does).
    """
    env = os.environ.get("FRAGILE_DATA")
    if env:
        return Path(env).expanduser()
    for base in (_REPO, Path.cwd()):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return (Path.cwd() / ".." / "shared" / "data").resolve()


def models_dir() -> Path:
    """The pretrained-weights folder: ``$FRAGILE_MODELS`` if set, else ``models`` beside :func:`data_dir`."""
    env = os.environ.get("FRAGILE_MODELS")
    return Path(env).expanduser() if env else data_dir().parent / "models"
