"""DualTrack's h5 sweep format (ImFusion DualTrack code base).

Format
------
- ``images``: (N, H, W) uint8 B-mode frames (other pixel types and (N, H, W, C) frames read and
  write with their own type).
- ``tracking``: (N, 4, 4) float, image -> world per frame, where DualTrack's *image* frame is in mm
  with its origin at the image centre, x along columns, y along rows, z out of plane.
- ``dimensions``: (W, H, 1).
- ``spacing``: (sx, sy, 1) mm per pixel.
- ``pixel_to_image``: (4, 4), pixel (0-based, origin at the top-left pixel) -> image mm:
  ``x_mm = (col - (W-1)/2) sx``, ``y_mm = (row - (H-1)/2) sy`` (for TUS-REC data
  ``(col - 319.5) sx``, ``(row - 239.5) sy``).

For a TUS-REC scan (see :mod:`freehand3d.io.tusrec`) DualTrack's ``tracking = tforms · R_T · D`` with
``D = translate(320.5 sx, 240.5 sy, 0)``.

Mapping to :class:`freehand3d.sweep.Sweep`: DualTrack has no separate tool frame, so the image-centred
mm frame plays the probe::

    sweep.transforms["ProbeToTracker"] = tracking
    sweep.image_to_probe = pixel_to_image
    sweep.spacing = spacing[:2]

and ``sweep.image_to("Tracker")`` maps a 0-based pixel to the same world point as
``tracking @ pixel_to_image``. Writing goes the other way from any sweep whose ``ImageToTracker`` (or
``ImageTo<world>``) can be composed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d._atomic import atomic_path
from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

__all__ = ["centred_pixel_to_image", "read_dualtrack_h5", "write_dualtrack_h5"]


def centred_pixel_to_image(spacing, frame_shape) -> np.ndarray:
    """DualTrack's ``pixel_to_image`` (4, 4) for (sx, sy) spacing and an (H, W) frame: scale by the
    spacing and move the origin to the image centre, ((W-1)/2, (H-1)/2) in 0-based pixels."""
    sx, sy = (float(v) for v in spacing[:2])
    h, w = frame_shape
    m = geometry.scaling([sx, sy, 1.0])
    m[0, 3] = -(w - 1) / 2.0 * sx
    m[1, 3] = -(h - 1) / 2.0 * sy
    return m


def _dataset(f, key: str, path: Path, required: bool = True):
    if key not in f:
        if required:
            raise InputError(f"missing h5 key '{key}' (has {sorted(f.keys())})", path)
        return None
    try:
        value = f[key][()]
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:  # h5py's errors on a damaged file
        raise InputError(f"cannot read h5 key '{key}' ({exc})", path) from None
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    return value


def _numeric(value: np.ndarray, key: str, shape: tuple, path: Path) -> np.ndarray:
    if not np.issubdtype(value.dtype, np.number) or value.shape != shape:
        raise InputError(f"h5 key '{key}' must be a numeric array of shape {shape}, got {value.dtype} {value.shape}", path)
    out = value.astype(np.float64)
    return out


def read_dualtrack_h5(path: str | os.PathLike) -> Sweep:
    """Read a DualTrack h5 sweep into a :class:`Sweep`.

    Returns
    -------
    Sweep
        ``frames`` = ``images``; ``transforms["ProbeToTracker"]`` = ``tracking`` (the "probe" frame is
        DualTrack's image-centred mm frame); ``image_to_probe`` = ``pixel_to_image`` (built from the
        spacing and the frame size when the file has none); ``spacing``; timestamps = frame indices.

    Raises
    ------
    InputError
        Missing ``images``/``tracking``/``spacing``, images of a type sweeps cannot hold, shapes that disagree
        (``tracking`` vs frame count, ``dimensions`` vs image size), non-positive spacing.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            images = _dataset(f, "images", path)
            tracking = _dataset(f, "tracking", path)
            spacing = _dataset(f, "spacing", path)
            dimensions = _dataset(f, "dimensions", path, required=False)
            pixel_to_image = _dataset(f, "pixel_to_image", path, required=False)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:  # h5py: damaged superblock / object headers
        raise InputError(f"not a readable HDF5 file ({exc})", path) from None
    from freehand3d.io.tusrec import _check_frames

    images = _check_frames(images, "images", path)
    n, h, w = images.shape[:3]
    tracking = _numeric(tracking, "tracking", (n, 4, 4), path)
    spacing = np.asarray(spacing).reshape(-1)
    if spacing.size not in (2, 3):
        raise InputError(f"h5 key 'spacing' must be (sx, sy, 1), got {spacing.size} values", path)
    spacing = _numeric(spacing, "spacing", spacing.shape, path)
    if not (np.isfinite(spacing[:2]).all() and (spacing[:2] > 0).all()):
        raise InputError(f"h5 key 'spacing' must be positive, got {spacing.tolist()}", path)
    if dimensions is not None:
        dims = np.asarray(dimensions).reshape(-1)
        if dims.size < 2 or not np.issubdtype(dims.dtype, np.number) or (int(dims[0]), int(dims[1])) != (w, h):
            raise InputError(f"h5 key 'dimensions' {dims.tolist()} does not match the images ({w} x {h})", path)
    if pixel_to_image is None:
        pixel_to_image = centred_pixel_to_image(spacing, (h, w))
    else:
        pixel_to_image = _numeric(pixel_to_image, "pixel_to_image", (4, 4), path)
        if not np.isfinite(pixel_to_image).all():
            raise InputError("h5 key 'pixel_to_image' holds non-finite values", path)
    return Sweep(
        frames=images,
        spacing=(float(spacing[0]), float(spacing[1])),
        transforms={"ProbeToTracker": tracking},
        image_to_probe=pixel_to_image,
        source=str(path),
    )


def write_dualtrack_h5(
    sweep: Sweep,
    path: str | os.PathLike,
    world: str = "Tracker",
    compression: str | None = "gzip",
) -> None:
    """Write a :class:`Sweep` in DualTrack's h5 layout (atomic).

    ``tracking = ImageTo<world> · pixel_to_image^-1`` with the centred ``pixel_to_image`` of
    :func:`centred_pixel_to_image`, so each 0-based pixel lands on the same world point as in the sweep.
    For a sweep read from TUS-REC this is exactly ``tforms · R_T · D`` (SPEC §10.5).

    Parameters
    ----------
    world : the frame DualTrack's "world" is (``"Tracker"``; ``"Reference"`` for PLUS sweeps with a
        reference marker).
    compression : h5py compression of every dataset (DualTrack's converter uses gzip).

    Raises
    ------
    InputError
        The sweep has no spacing or no way to compose ``ImageTo<world>``.
    """
    import h5py

    from freehand3d.io.tusrec import _spacing_of

    spacing = _spacing_of(sweep)
    h, w = sweep.frame_shape
    pixel_to_image = centred_pixel_to_image(spacing, (h, w))
    image_to_world, _valid = sweep.transform(f"ImageTo{world}")
    tracking = geometry.compose(image_to_world, geometry.invert(pixel_to_image))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=sweep.frames, compression=compression)  # own pixel type
            f.create_dataset("tracking", data=tracking, compression=compression)
            f.create_dataset("dimensions", data=np.array([w, h, 1]))
            f.create_dataset("spacing", data=np.array([spacing[0], spacing[1], 1.0]))
            f.create_dataset("pixel_to_image", data=pixel_to_image)
