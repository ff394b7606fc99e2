"""3D volumes on disk through SimpleITK: .nrrd, .mha, .nii, .nii.gz, with origin, spacing, direction.

Volumes are SimpleITK images (DESIGN: arrays inside are (z, y, x)); geometry follows SimpleITK's
order: ``origin`` (x, y, z) in mm, ``spacing`` (sx, sy, sz) in mm per voxel, ``direction`` the 3x3
matrix whose columns are the x, y, z voxel axes in world coordinates (row-major, 9 numbers).
Writes are atomic; read failures raise :class:`~freehand3d.errors.InputError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from freehand3d._atomic import atomic_path
from freehand3d.errors import InputError

#: suffixes :func:`write_volume` accepts (SimpleITK picks the writer from the suffix); ``.mhd`` is left
#: out on purpose: its separate ``.raw`` would be named after the temporary file of the atomic write.
VOLUME_SUFFIXES = (".nrrd", ".mha", ".nii.gz", ".nii")


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def _geometry_vector(value, dim: int, what: str, positive: bool = False) -> tuple[float, ...]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (dim,) or not np.isfinite(arr).all() or (positive and (arr <= 0).any()):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{what} must be {dim} {kind} numbers (x, y, z order), got {value!r}")
    return tuple(float(v) for v in arr)


def write_volume(
    image_or_array,
    path: str | os.PathLike,
    origin=None,
    spacing=None,
    direction=None,
    compress: bool = True,
) -> None:
    """Write a 2D/3D volume atomically.

    Parameters
    ----------
    image_or_array : SimpleITK.Image or numpy.ndarray
        A SimpleITK image, or an array indexed (z, y, x) (or (y, x)); bool arrays are written as uint8.
    path : str or os.PathLike
        ``.nrrd``, ``.mha``, ``.nii.gz`` or ``.nii``.
    origin, spacing, direction : optional
        Override the image's geometry: origin (x, y, z) mm, spacing (sx, sy, sz) mm, direction 3x3
        (columns = voxel axes). For an array, unspecified values default to 0, 1 and identity.
    compress : bool
        Compress the voxels (.nrrd gzip, .mha zlib); ``.nii.gz`` is always and ``.nii`` never compressed.

    Raises
    ------
    InputError
        Unsupported file type or SimpleITK cannot write the image there.
    ValueError
        Geometry arguments of the wrong size, non-finite or non-positive spacing.

    Examples
    --------
    >>> write_volume(np.zeros((4, 5, 6), np.uint8), "vol.nrrd", spacing=(0.5, 0.5, 1.0))  # doctest: +SKIP
    """
    import SimpleITK as sitk

    path = Path(path)
    suffix = _suffix(path)
    if suffix is None:
        raise InputError(f"unknown volume format (expected one of {', '.join(VOLUME_SUFFIXES)})", path)
    if isinstance(image_or_array, sitk.Image):
        image = sitk.Image(image_or_array)  # our geometry edits must not reach the caller's image
    else:
        array = np.asarray(image_or_array)
        if array.ndim not in (2, 3):
            raise ValueError(f"a volume array must be (z, y, x) or (y, x), got shape {array.shape}")
        if array.dtype == bool:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    dim = image.GetDimension()
    if origin is not None:
        image.SetOrigin(_geometry_vector(origin, dim, "origin"))
    if spacing is not None:
        image.SetSpacing(_geometry_vector(spacing, dim, "spacing", positive=True))
    if direction is not None:
        matrix = np.asarray(direction, dtype=np.float64).reshape(-1)
        if matrix.shape != (dim * dim,) or not np.isfinite(matrix).all():
            raise ValueError(f"direction must be a {dim}x{dim} matrix, got {direction!r}")
        if abs(np.linalg.det(matrix.reshape(dim, dim))) < 1e-6:
            raise ValueError("direction matrix is singular")
        image.SetDirection(tuple(float(v) for v in matrix))
    use_compression = compress if suffix in (".nrrd", ".mha") else suffix == ".nii.gz"
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), use_compression)
    except RuntimeError as exc:
        raise InputError(f"SimpleITK cannot write this volume ({_first_line(exc)})", path) from None


def _first_line(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK puts the useful sentence after a "Description:" tag, otherwise take the last line
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def read_volume(path: str | os.PathLike):
    """Read a volume with SimpleITK.

    Parameters
    ----------
    path : str or os.PathLike
        Any file SimpleITK reads (.nrrd, .mha, .mhd, .nii, .nii.gz, ...).

    Returns
    -------
    SimpleITK.Image
        With origin, spacing and direction; ``SimpleITK.GetArrayFromImage`` gives (z, y, x).

    Raises
    ------
    InputError
        The file is missing or SimpleITK cannot read it (the message names the file).
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if path.is_dir():
        raise InputError("is a folder, not a volume file", path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"not a readable volume ({_first_line(exc)})", path) from None


def volume_summary(image) -> dict:
    """Size, geometry and value range of a SimpleITK image, as plain Python values (for ``info``)."""
    import SimpleITK as sitk

    array = sitk.GetArrayViewFromImage(image)
    return {
        "size": tuple(int(v) for v in image.GetSize()),
        "spacing": tuple(float(v) for v in image.GetSpacing()),
        "origin": tuple(float(v) for v in image.GetOrigin()),
        "direction": tuple(float(v) for v in image.GetDirection()),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": int(image.GetNumberOfComponentsPerPixel()),
        "min": float(array.min()) if array.size else None,
        "max": float(array.max()) if array.size else None,
        "nonzero_fraction": float(np.count_nonzero(array) / array.size) if array.size else 0.0,
    }


__all__ = ["read_volume", "write_volume", "volume_summary", "VOLUME_SUFFIXES"]
