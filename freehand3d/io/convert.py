"""Convert a sweep file from one format to another (the library side of ``freehand3d convert``)."""

from __future__ import annotations

import os
from pathlib import Path

from freehand3d.errors import InputError
from freehand3d.sweep import Sweep


def convert_sweep_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    compress: bool = True,
    h5_format: str = "dualtrack",
) -> Sweep:
    """Read ``source`` with :func:`~freehand3d.io.read_sweep` and write it to ``target`` with
    :func:`~freehand3d.io.write_sweep` (format from the file name; the write is atomic).

    Parameters
    ----------
    source, target : paths; ``target`` may not be the same file as ``source``.
    compress : compress the pixel data (PLUS zlib/gzip, DualTrack h5 gzip; TUS-REC h5 is written as
        the challenge files are).
    h5_format : ``"dualtrack"`` or ``"tusrec"`` for an ``.h5`` target.

    Returns
    -------
    Sweep
        The sweep that was written.
    """
    from freehand3d.io import H5_SUFFIXES, read_sweep, write_sweep

    source, target = Path(source), Path(target)
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise InputError("output is the input file; choose another name", target)
    sweep = read_sweep(source)
    if target.name.lower().endswith(H5_SUFFIXES):
        if h5_format == "tusrec":
            write_sweep(sweep, target, format="tusrec")
        elif h5_format == "dualtrack":
            write_sweep(sweep, target, compression="gzip" if compress else None)
        else:
            raise InputError(f"unknown h5 format {h5_format!r} (dualtrack or tusrec)", target)
    else:
        write_sweep(sweep, target, compress=compress)
    return sweep


__all__ = ["convert_sweep_file"]
