"""ITK text transform files (``.tfm`` / ``.txt``), the format 3D Slicer, SimpleITK and ANTs read.

Layout written (one affine transform)::

    #Insight Transform File V1.0
    #Transform 0
    Transform: AffineTransform_double_3_3
    Parameters: m00 m01 m02 m10 m11 m12 m20 m21 m22 tx ty tz
    FixedParameters: 0 0 0

``Parameters`` are the 3x3 matrix row by row, then the translation; ``FixedParameters`` is the centre
of rotation c. ITK maps a point x to ``M (x - c) + c + t``; freehand3d writes c = 0, and reading folds
any centre into the translation (``t + c - M c``).

Coordinate conventions (read this before handing a file to another program)
----------------------------------------------------------------------------
- **ITK / SimpleITK** use LPS world coordinates and apply the file's transform as written.
- **3D Slicer** keeps RAS coordinates in its scene and converts on load/save: a file's LPS matrix M is
  turned into ``F M F`` with ``F = diag(-1, -1, 1, 1)``. Slicer also reads a linear ``.tfm`` as the
  *resampling* ("from parent") transform, i.e. the inverse of the node's "to parent" matrix.
- **PLUS** frames (Image, Probe, Tracker, Reference ...) have no anatomical axes; PLUS itself stores
  fixed transforms in the device-set XML (:mod:`freehand3d.io.plus_config`), not in .tfm files. When a
  PLUS transform is loaded into Slicer (e.g. through PlusServer/OpenIGTLink) its matrix is used as the
  node's RAS "to parent" matrix as is.

So: ``lps=False`` (default) writes/reads the matrix unchanged (what ITK/SimpleITK code expects);
``lps=True`` treats the given matrix as RAS and converts it to LPS on writing (and back on reading).
To make Slicer show a transform node whose "to parent" matrix is ``A_to_B`` (e.g. a PLUS
``ImageToProbe``), use :func:`write_slicer_transform`, which inverts and converts.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d._atomic import write_text_atomic
from freehand3d.errors import InputError

__all__ = ["write_itk_transform", "read_itk_transform", "write_slicer_transform", "read_slicer_transform", "RAS_LPS"]

#: the RAS <-> LPS basis change (its own inverse)
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

_AFFINE_TYPES = (
    "AffineTransform_double_3_3",
    "AffineTransform_float_3_3",
    "MatrixOffsetTransformBase_double_3_3",
    "MatrixOffsetTransformBase_float_3_3",
)


def _check_affine(matrix) -> np.ndarray:
    m = geometry.as_matrix_stack(matrix, "transform")
    if m.shape != (4, 4):
        raise ValueError(f"expected one 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the transform holds non-finite values")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise ValueError(f"the last row must be (0, 0, 0, 1) for an affine transform, got {m[3]}")
    return m


def write_itk_transform(path: str | os.PathLike, matrix, lps: bool = False) -> None:
    """Write one affine 4x4 as an ITK ``AffineTransform_double_3_3`` text file (atomic).

    Parameters
    ----------
    path : ``.tfm`` or ``.txt``.
    matrix : (4, 4) affine transform (mm).
    lps : if True, ``matrix`` is in RAS coordinates and is converted to ITK's LPS (``F M F``).

    Examples
    --------
    >>> write_itk_transform("probe.tfm", np.eye(4))  # doctest: +SKIP
    """
    m = _check_affine(matrix)
    if lps:
        m = RAS_LPS @ m @ RAS_LPS
    params = [*m[:3, :3].ravel(), *m[:3, 3]]
    text = (
        "#Insight Transform File V1.0\n"
        "#Transform 0\n"
        "Transform: AffineTransform_double_3_3\n"
        f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
        "FixedParameters: 0 0 0\n"
    )
    write_text_atomic(path, text)


def read_itk_transform(path: str | os.PathLike, lps: bool = False) -> np.ndarray:
    """Read the (single, affine) transform of an ITK text transform file as a (4, 4) matrix.

    Accepts ``AffineTransform``/``MatrixOffsetTransformBase`` (12 parameters) with any centre
    (``FixedParameters``), which is folded into the translation. With ``lps=True`` the result is
    converted from the file's LPS to RAS. Composite files with more than one transform, binary
    (``.h5``/``.mat``) files and non-linear transforms raise InputError.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the transform file ({exc.__class__.__name__})", path) from None
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise InputError("not an ITK text transform file (first line must be '#Insight Transform File V1.0')", path)
    fields: list[dict[str, str]] = []
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        key = key.strip()
        if line.startswith("#") or not sep:
            continue
        if key == "Transform":
            fields.append({"Transform": value.strip()})
        elif fields:
            fields[-1][key] = value.strip()
    fields = [f for f in fields if not f["Transform"].startswith("CompositeTransform")]
    if len(fields) != 1:
        raise InputError(f"expected exactly one transform, found {len(fields)}", path)
    kind = fields[0]["Transform"]
    if kind not in _AFFINE_TYPES:
        raise InputError(f"unsupported transform type {kind!r} (only 3D affine transforms are read)", path)

    def numbers(key: str, n: int) -> np.ndarray:
        try:
            values = np.array([float(v) for v in fields[0].get(key, "").split()])
        except ValueError:
            raise InputError(f"{key} holds a value that is not a number", path) from None
        if values.size != n or not np.isfinite(values).all():
            raise InputError(f"{key} needs {n} finite numbers, got {values.size}", path)
        return values

    params = numbers("Parameters", 12)
    centre = numbers("FixedParameters", 3) if fields[0].get("FixedParameters", "").strip() else np.zeros(3)
    m = np.eye(4)
    m[:3, :3] = params[:9].reshape(3, 3)
    m[:3, 3] = params[9:] + centre - m[:3, :3] @ centre
    if lps:
        m = RAS_LPS @ m @ RAS_LPS
    return m


def write_slicer_transform(path: str | os.PathLike, to_parent_ras) -> None:
    """Write a ``.tfm`` that 3D Slicer loads as a linear transform node whose *to parent* matrix is
    ``to_parent_ras`` (e.g. ``ImageToProbe`` to place an image under a probe node).

    Slicer reads .tfm files as resampling ("from parent") transforms in LPS, so this writes
    ``F · to_parent^-1 · F``.
    """
    write_itk_transform(path, geometry.invert(_check_affine(to_parent_ras)), lps=True)


def read_slicer_transform(path: str | os.PathLike) -> np.ndarray:
    """Inverse of :func:`write_slicer_transform`: the RAS *to parent* matrix Slicer would show."""
    return geometry.invert(read_itk_transform(path, lps=True))
