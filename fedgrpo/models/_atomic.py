"""Atomic publication of model folders (internal helper).

Contract:

* :func:`staging_dir` creates a fresh, uniquely named hidden sibling of the
  target (``<parent>/.<name>.tmp-<pid>-<rand>``), on the same filesystem so a
  final ``rename`` is atomic.
* :func:`publish_once` renames a finished staging folder to the target if the
  target does not exist yet.  If another process published first, the staging
  folder is deleted and the existing target is kept ("first writer wins").
  Readers therefore never observe a half-written target.
* :func:`publish_replace` renames a finished staging folder to the target,
  replacing an existing target (the old folder is first renamed aside, then
  deleted).  There is a short window where the target is absent, but never a
  window where it is partially written.
* :func:`is_complete` tells whether a folder holds all the given files.
* :func:`build_folder` is the whole pattern: write into a staging folder,
  check it is complete, publish it (replacing an incomplete target left by
  something else), and discard the staging folder if anything fails.
* Published folders are world-readable (dirs 0755, files 0644): safetensors
  writes its files 0600, which breaks readers running as another user.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Iterable

__all__ = ["staging_dir", "publish_once", "publish_replace", "is_complete", "discard", "build_folder"]

log = logging.getLogger(__name__)


def _sibling(target: Path, tag: str) -> Path:
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def staging_dir(target: Path) -> Path:
    """Create and return an empty staging folder next to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    tmp.mkdir()
    return tmp


def discard(path: Path) -> None:
    """Remove ``path`` (folder or file) if it exists; never raises."""
    shutil.rmtree(path, ignore_errors=True)


def is_complete(folder: Path, required: Iterable[str]) -> bool:
    """True if ``folder`` is a directory containing every file in ``required``."""
    folder = Path(folder)
    return folder.is_dir() and all((folder / name).is_file() for name in required)


def _make_readable(folder: Path) -> None:
    os.chmod(folder, 0o755)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)


def publish_once(staged: Path, target: Path) -> Path:
    """Rename ``staged`` to ``target`` unless ``target`` already exists.

    Returns ``target``.  When ``target`` exists (another writer won the race),
    ``staged`` is deleted and the existing folder is returned unchanged.
    """
    staged, target = Path(staged), Path(target)
    _make_readable(staged)
    try:
        # os.rename onto an existing non-empty directory fails atomically
        # (ENOTEMPTY/EEXIST); onto an *empty* one it succeeds, which is fine.
        os.rename(staged, target)
    except OSError:
        if target.is_dir():
            discard(staged)
            return target
        raise
    return target


def publish_replace(staged: Path, target: Path) -> Path:
    """Rename ``staged`` to ``target``, replacing any existing ``target``."""
    staged, target = Path(staged), Path(target)
    _make_readable(staged)
    for _ in range(10):
        old = None
        if target.exists():
            old = _sibling(target, "old")
            try:
                os.rename(target, old)
            except FileNotFoundError:  # somebody else moved it meanwhile
                old = None
        try:
            os.rename(staged, target)
        except OSError:
            if old is not None:
                discard(old)
            if target.exists():  # a concurrent writer re-created it; retry
                continue
            raise
        if old is not None:
            discard(old)
        return target
    raise RuntimeError(f"could not replace {target}: concurrent writers kept re-creating it")


def build_folder(target: Path, required: Iterable[str], write: Callable[[Path], None], what: str) -> Path:
    """Run ``write(staged)`` and publish the staged folder at ``target``; returns ``target``."""
    target, required = Path(target), tuple(required)
    staged = staging_dir(target)
    try:
        write(staged)
        if not is_complete(staged, required):
            raise RuntimeError(f"{what} in {staged} is missing files")
        if target.exists() and not is_complete(target, required):
            # A stale, incomplete folder (never one of ours: we only rename
            # complete folders into place): replace it.
            log.warning("replacing incomplete model folder %s", target)
            return publish_replace(staged, target)
        return publish_once(staged, target)
    except BaseException:
        discard(staged)
        raise
