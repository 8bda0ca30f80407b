"""Weights for users with internet: download once into a cache, verify SHA-256.

The cache is ``FRAGILE_CACHE`` (default ``~/.cache/fragile``). A file whose checksum does not match is
deleted and reported; nothing unverified is ever returned.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from fragile.errors import FragileError


def cache_dir() -> Path:
    """The download cache: ``$FRAGILE_CACHE``, default ``~/.cache/fragile`` (not created here)."""
    return Path(os.environ.get("FRAGILE_CACHE", Path.home() / ".cache" / "fragile"))


def sha256(path: Path) -> str:
    """The hex SHA-256 digest of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256_hex: str, *, filename: str | None = None, cache: str | Path | None = None,
             timeout: float = 60.0) -> Path:
    """Path of the verified file, downloading it if it is not cached yet."""
    folder = Path(cache) if cache else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    if target.exists() and sha256(target) == sha256_hex:
        return target
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as fh:  # noqa: S310
            while block := response.read(1 << 20):
                fh.write(block)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise FragileError(f"download of {url} failed: {err}") from None
    got = sha256(tmp)
    if got != sha256_hex:
        tmp.unlink(missing_ok=True)
        raise FragileError(f"checksum mismatch for {url}: expected sha256 {sha256_hex}, got {got}")
    os.replace(tmp, target)
    return target
