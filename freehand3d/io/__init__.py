"""Reading and writing sweeps, device sets and volumes.

``read_sweep`` / ``write_sweep`` dispatch on the file name:

==========================================  =============================================
``.igs.mha .seq.mha .mha .mhd .igs.nrrd .seq.nrrd .nrrd``  PLUS sequence files (:mod:`.plus_sequence`)
``.h5 .hdf5`` with ``frames`` + ``tforms``       TUS-REC scan (:mod:`.tusrec`)
``.h5 .hdf5`` with ``images`` + ``tracking``     DualTrack sweep (:mod:`.dualtrack_h5`)
==========================================  =============================================

Volumes (SimpleITK images) go through :func:`freehand3d.io.volumes.read_volume` and
:func:`freehand3d.io.volumes.write_volume`.
"""

from __future__ import annotations

import os
from pathlib import Path

from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

SEQUENCE_SUFFIXES = (".igs.mha", ".seq.mha", ".igs.nrrd", ".seq.nrrd", ".mha", ".nrrd", ".mhd")
H5_SUFFIXES = (".h5", ".hdf5")


def _kind(path: Path, for_writing: bool) -> str:
    name = path.name.lower()
    if name.endswith(SEQUENCE_SUFFIXES):
        return "plus"
    if name.endswith(H5_SUFFIXES):
        if for_writing:
            return "h5"
        import h5py

        try:
            with h5py.File(path, "r") as f:
                keys = set(f.keys())
        except OSError as exc:
            raise InputError(f"not a readable HDF5 file ({exc})", path) from None
        if {"frames", "tforms"} <= keys:
            return "tusrec"
        if {"images", "tracking"} <= keys:
            return "dualtrack"
        raise InputError(
            f"HDF5 file is neither a TUS-REC scan (frames, tforms) nor a DualTrack sweep "
            f"(images, tracking); it has keys {sorted(keys)}",
            path,
        )
    raise InputError(
        "unknown sweep format (expected .igs.mha, .seq.mha, .igs.nrrd, .seq.nrrd, .mha, .mhd, .nrrd, .h5)", path
    )


def read_sweep(path: str | os.PathLike, **kwargs) -> Sweep:
    """Read a tracked sweep from any supported file (see module docstring)."""
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    kind = _kind(path, for_writing=False)
    if kind == "plus":
        from freehand3d.io.plus_sequence import read_plus_sequence

        return read_plus_sequence(path, **kwargs)
    if kind == "tusrec":
        from freehand3d.io.tusrec import read_tusrec

        return read_tusrec(path, **kwargs)
    from freehand3d.io.dualtrack_h5 import read_dualtrack_h5

    return read_dualtrack_h5(path, **kwargs)


def write_sweep(sweep: Sweep, path: str | os.PathLike, **kwargs) -> None:
    """Write a sweep; the format follows the file name. ``.h5`` writes the DualTrack layout unless
    ``format="tusrec"`` is given. Writes are atomic."""
    path = Path(path)
    kind = _kind(path, for_writing=True)
    if kind == "plus":
        from freehand3d.io.plus_sequence import write_plus_sequence

        return write_plus_sequence(sweep, path, **kwargs)
    fmt = kwargs.pop("format", "dualtrack")
    if fmt == "tusrec":
        from freehand3d.io.tusrec import write_tusrec

        return write_tusrec(sweep, path, **kwargs)
    from freehand3d.io.dualtrack_h5 import write_dualtrack_h5

    return write_dualtrack_h5(sweep, path, **kwargs)


__all__ = ["read_sweep", "write_sweep", "SEQUENCE_SUFFIXES"]
