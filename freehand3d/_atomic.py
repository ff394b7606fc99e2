"""Atomic file writes: write to a hidden temp file in the same folder, then rename over the target.

A reader never sees a half-written file, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same full suffix, so writers that dispatch on the
    extension still work); on success rename it to ``path``, on any error delete it."""
    from freehand3d.errors import OutputError

    target = Path(path)
    check_output_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the folder ({exc.strerror or exc})", target.parent) from None
    tmp = target.with_name(f".tmp-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):  # full disk, quota, permissions changed meanwhile ...
            raise OutputError(f"cannot write ({exc.strerror or exc})", target) from None
        if isinstance(exc, RuntimeError) and tmp.name in str(exc):  # SimpleITK/ITK's writer errors
            raise OutputError(f"cannot write ({str(exc).strip().splitlines()[-1][:200]})", target) from None
        raise


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest existing parent (where a write would create folders)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_path(path: str | os.PathLike, what: str = "output") -> Path:
    """Check before the work starts that ``path`` can be written: not a folder, and its nearest
    existing parent is a writable folder. Raises :class:`freehand3d.errors.OutputError`."""
    from freehand3d.errors import OutputError

    target = Path(path)
    if target.is_dir():
        raise OutputError(f"the {what} names a folder; give a file name", target)
    parent = _nearest_existing(target.parent)
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot write the {what}: {parent} is a file, not a folder", target)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what}: the folder {parent} is not writable", target)
    return target


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Check before the work starts that folder ``path`` exists and is writable or can be created."""
    from freehand3d.errors import OutputError

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"the {what} is a file, not a folder", folder)
    parent = _nearest_existing(folder)
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"cannot create the {what}: {parent} is a file", folder)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the {what}: {parent} is not writable", folder)
    return folder


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
