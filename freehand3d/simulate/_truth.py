"""Ground truth of a simulation as an ``.npz`` file (arrays only, loadable without freehand3d)."""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.errors import InputError


def truth_path_for(sweep_path: str | os.PathLike) -> Path:
    """``run.igs.mha`` -> ``run.igs.mha.truth.npz``: the ground truth the CLI writes beside a
    simulated sweep. The whole file name is kept, so ``run.igs.mha`` and ``run.h5`` in one folder
    get two truth files (stripping the extension made the second overwrite the first)."""
    path = Path(sweep_path)
    return path.with_name(path.name + ".truth.npz")


#: what numpy raises on a damaged / empty / non-npz file: EOFError for an empty file (click would
#: print a bare "Aborted."), BadZipFile / zlib.error / KeyError for a damaged archive
_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile, zlib.error)


def save_truth(path: str | os.PathLike, truth: dict, compress: bool = True) -> None:
    """Write a truth dict (str -> array-like) atomically as ``.npz``."""
    arrays = {key: np.asarray(value) for key, value in truth.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            (np.savez_compressed if compress else np.savez)(handle, **arrays)


def load_truth(path: str | os.PathLike) -> dict:
    """Read a truth ``.npz`` back into a dict of arrays (0-d arrays become scalars)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: (data[key][()] if data[key].ndim == 0 else data[key]) for key in data.files}
    except _NPZ_ERRORS as exc:
        raise InputError(f"cannot read simulation truth ({exc.__class__.__name__}: {exc})", path) from None
