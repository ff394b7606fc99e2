"""TUS-REC challenge scans: h5 ``frames`` + ``tforms`` and the ``calib_matrix.csv`` beside them.

Format (TUS-REC 2024/2025 challenge data)
-----------------------------------------
- ``<scan>.h5``: ``frames`` (N, 480, 640) uint8 B-mode images (other pixel types and (N, H, W, C)
  colour frames read and write with their own type); ``tforms`` (N, 4, 4) float32, the
  tracking tool -> optical camera (tracker) pose of each frame.
- ``calib_matrix.csv`` (comma separated, usually one per dataset, in the dataset root): line 0 a
  header, lines 1-4 the pixel -> image-mm scaling ``S = diag(sx, sy, 1, 1)``, line 5 a header,
  lines 6-9 the rigid calibration ``R_T`` (image-mm -> tool).
- Pixel coordinates are **1-based**: the challenge's pixel grid is x = 1..640, y = 1..480, so image mm
  = (1-based pixel) * spacing, and the image-mm frame has its origin one pixel up-left of the
  top-left pixel centre.

Mapping to :class:`freehand3d.sweep.Sweep` (0-based pixels, x = column, y = row)::

    sweep.transforms["ProbeToTracker"] = tforms                 (Probe = tracking tool)
    sweep.image_to_probe = R_T @ S @ translate(1, 1, 0)          (0-based pixel -> tool mm)
    sweep.spacing = (sx, sy)

so ``sweep.image_to("Tracker")`` maps a 0-based pixel to exactly the camera point the challenge's
``tforms @ R_T @ S @ [x+1, y+1, 0, 1]`` gives.

The module also gives the challenge's frame-pair transforms (:func:`tusrec_pair_transforms`) and the
exact relation to DualTrack's image-centred frame (:func:`image_centre_offset`,
:func:`tusrec_to_dualtrack_transforms`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from freehand3d import geometry
from freehand3d._atomic import atomic_path, write_text_atomic
from freehand3d.errors import InputError
from freehand3d.sweep import Sweep

__all__ = [
    "TUSREC_SPACING",
    "TUSREC_FRAME_SHAPE",
    "TusRecCalibration",
    "read_tusrec_calibration",
    "write_tusrec_calibration",
    "read_tusrec",
    "write_tusrec",
    "image_centre_offset",
    "tusrec_to_dualtrack_transforms",
    "dualtrack_to_tusrec_transforms",
    "tusrec_pair_transforms",
    "read_tusrec_landmarks",
]

#: pixel spacing (mm, x = columns, y = rows) of the TUS-REC 2024/2025 data
TUSREC_SPACING = (0.229389190673828, 0.220979690551758)
#: (H, W) of TUS-REC frames
TUSREC_FRAME_SHAPE = (480, 640)

CALIB_FILENAME = "calib_matrix.csv"
_SCALE_HEADER = "scaling_from_pixel_to_mm"
_RT_HEADER = "spatial_calibration_from_image_coordinate_system_to_tracking_tool_coordinate_system"


@dataclass
class TusRecCalibration:
    """The two matrices of ``calib_matrix.csv``.

    Attributes
    ----------
    scale : (4, 4) ``S``, 1-based pixels -> image mm (``diag(sx, sy, 1, 1)``).
    image_to_tool : (4, 4) ``R_T``, image mm -> tracking tool mm.
    """

    scale: np.ndarray
    image_to_tool: np.ndarray

    @property
    def spacing(self) -> tuple[float, float]:
        """(sx, sy) mm per pixel."""
        return float(self.scale[0, 0]), float(self.scale[1, 1])

    @property
    def pixel_to_tool(self) -> np.ndarray:
        """(4, 4) **0-based** pixel (x = column, y = row) -> tool mm: ``R_T · S · translate(1, 1, 0)``."""
        return self.image_to_tool @ self.scale @ geometry.translation([1.0, 1.0, 0.0])

    @classmethod
    def from_image_to_probe(cls, image_to_probe, spacing) -> "TusRecCalibration":
        """The calibration that reproduces a Sweep's ``image_to_probe`` (0-based pixels -> probe mm)
        with the given spacing: ``R_T = image_to_probe · translate(-1, -1, 0) · S^-1``."""
        sx, sy = (float(v) for v in spacing)
        scale = geometry.scaling([sx, sy, 1.0])
        image_to_tool = np.asarray(image_to_probe, float) @ geometry.translation([-1.0, -1.0, 0.0]) @ geometry.invert(scale)
        return cls(scale, image_to_tool)


def read_tusrec_calibration(path: str | os.PathLike, dtype=np.float64) -> TusRecCalibration:
    """Read ``calib_matrix.csv``.

    Parameters
    ----------
    path : the csv file.
    dtype : float64 by default; the challenge's own reader parses float32 (pass ``np.float32`` and
        widen later to reproduce its rounding).

    Raises
    ------
    InputError
        Missing file, fewer than 10 lines, or rows that are not 4 numbers.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the TUS-REC calibration csv ({exc.__class__.__name__})", path) from None
    if len(lines) < 10:
        raise InputError(f"calib_matrix.csv needs 10 lines (2 headers + two 4x4 matrices), got {len(lines)}", path)

    def block(first: int, what: str) -> np.ndarray:
        rows = []
        for k in range(first, first + 4):
            cells = [c for c in lines[k].replace(";", ",").split(",") if c.strip()]
            try:
                values = [float(c) for c in cells]
            except ValueError:
                raise InputError(f"line {k + 1} of the {what} is not 4 numbers: {lines[k]!r}", path) from None
            if len(values) != 4 or not np.all(np.isfinite(values)):
                raise InputError(f"line {k + 1} of the {what} is not 4 finite numbers: {lines[k]!r}", path)
            rows.append(values)
        return np.asarray(np.asarray(rows, dtype=dtype), dtype=np.float64)

    scale = block(1, "pixel -> mm scaling")
    image_to_tool = block(6, "image -> tool calibration")
    if scale[0, 0] <= 0 or scale[1, 1] <= 0:
        raise InputError("the pixel -> mm scaling must have positive sx and sy", path)
    return TusRecCalibration(scale, image_to_tool)


def write_tusrec_calibration(calibration: TusRecCalibration, path: str | os.PathLike) -> None:
    """Write ``calib_matrix.csv`` in the challenge layout (atomic)."""

    def rows(m):
        return [",".join(repr(float(v)) for v in row) for row in np.asarray(m, float)]

    text = "\n".join([_SCALE_HEADER, *rows(calibration.scale), _RT_HEADER, *rows(calibration.image_to_tool)]) + "\n"
    write_text_atomic(path, text)


def _find_calibration(h5_path: Path) -> Path | None:
    # the challenge keeps one csv at the dataset root, with scans two or three folders below it
    for folder in [h5_path.parent, *h5_path.parents[:4]]:
        candidate = folder / CALIB_FILENAME
        if candidate.is_file():
            return candidate
    return None


def _read_dataset(f, key: str, path: Path) -> np.ndarray:
    if key not in f:
        raise InputError(f"missing h5 key '{key}' (has {sorted(f.keys())})", path)
    try:
        return f[key][()]
    except (OSError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:  # h5py's errors on a damaged file
        raise InputError(f"cannot read h5 key '{key}' ({exc})", path) from None


def _check_frames(frames: np.ndarray, key: str, path: Path) -> np.ndarray:
    """Frames of any pixel type a :class:`Sweep` holds, kept as stored (the challenge data is uint8)."""
    from freehand3d.sweep import PIXEL_TYPES

    if not isinstance(frames, np.ndarray) or frames.ndim not in (3, 4):
        raise InputError(f"h5 key '{key}' must be (N, H, W) or (N, H, W, C) frames, got shape {np.shape(frames)}", path)
    if frames.dtype.newbyteorder("=") not in PIXEL_TYPES:
        raise InputError(
            f"h5 key '{key}' has pixel type {frames.dtype}; frames may be "
            + ", ".join(t.name for t in PIXEL_TYPES), path,
        )
    return frames


def _check_poses(poses: np.ndarray, n: int, key: str, path: Path) -> np.ndarray:
    if not isinstance(poses, np.ndarray) or poses.shape != (n, 4, 4):
        raise InputError(f"h5 key '{key}' must be ({n}, 4, 4) to match the frames, got {np.shape(poses)}", path)
    if not np.issubdtype(poses.dtype, np.number):
        raise InputError(f"h5 key '{key}' must hold numbers, got {poses.dtype}", path)
    return poses.astype(np.float64)


def read_tusrec(path: str | os.PathLike, calib: str | os.PathLike | TusRecCalibration | None = None) -> Sweep:
    """Read a TUS-REC scan into a :class:`Sweep`.

    Parameters
    ----------
    path : the scan's ``.h5`` (keys ``frames`` and ``tforms``).
    calib : ``calib_matrix.csv`` path or a :class:`TusRecCalibration`; by default the csv is looked
        for beside the h5 file and up to four folders above it. Without one the sweep has only
        ``ProbeToTracker`` (no spacing, no ``image_to_probe``).

    Returns
    -------
    Sweep
        ``frames``, ``transforms["ProbeToTracker"]`` = ``tforms`` (tool -> camera), ``image_to_probe``
        = ``R_T · S · translate(1, 1, 0)`` (0-based pixels -> tool mm), ``spacing`` = (sx, sy).
        Timestamps are frame indices (the challenge gives none).

    Raises
    ------
    InputError
        Missing key, frames of a type sweeps cannot hold, shape mismatch, unreadable file or calibration.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            frames = _check_frames(_read_dataset(f, "frames", path), "frames", path)
            tforms = _check_poses(_read_dataset(f, "tforms", path), len(frames), "tforms", path)
    except (OSError, KeyError, RuntimeError, ValueError) as exc:  # h5py: damaged superblock / object headers
        raise InputError(f"not a readable HDF5 file ({exc})", path) from None
    if calib is None:
        found = _find_calibration(path)
        calibration = None if found is None else read_tusrec_calibration(found)
    elif isinstance(calib, TusRecCalibration):
        calibration = calib
    else:
        calibration = read_tusrec_calibration(calib)
    return Sweep(
        frames=frames,
        spacing=None if calibration is None else calibration.spacing,
        transforms={"ProbeToTracker": tforms},
        image_to_probe=None if calibration is None else calibration.pixel_to_tool,
        source=str(path),
    )


def _spacing_of(sweep: Sweep) -> tuple[float, float]:
    if sweep.spacing is not None:
        return sweep.spacing
    if sweep.image_to_probe is not None:
        # the column norms of the pixel -> mm matrix are the spacing
        return (
            float(np.linalg.norm(sweep.image_to_probe[:3, 0])),
            float(np.linalg.norm(sweep.image_to_probe[:3, 1])),
        )
    raise InputError("the sweep has neither a pixel spacing nor an image_to_probe calibration", sweep.source)


def _probe_to_tracker(sweep: Sweep) -> np.ndarray:
    if "ProbeToTracker" in sweep.transforms:
        return sweep.transforms["ProbeToTracker"]
    if "ImageToTracker" in sweep.transforms:
        # a sweep without a separate calibration: the image frame plays the tool frame
        return sweep.transforms["ImageToTracker"]
    raise InputError(
        f"writing a TUS-REC scan needs a ProbeToTracker transform; the sweep has {sorted(sweep.transforms)}",
        sweep.source,
    )


def write_tusrec(
    sweep: Sweep,
    path: str | os.PathLike,
    calib_path: str | os.PathLike | None = None,
    dtype=np.float32,
) -> None:
    """Write a :class:`Sweep` as a TUS-REC scan: ``path`` (h5) and ``calib_matrix.csv`` beside it.

    ``tforms`` = ``ProbeToTracker`` (stored as ``dtype``, float32 like the challenge data);
    the csv holds ``S = diag(sx, sy, 1, 1)`` and ``R_T = image_to_probe · translate(-1, -1, 0) · S^-1``
    so that reading the pair back reproduces ``image_to_probe`` (the sweep's calibration; identity
    pixel spacing is not assumed). Invalid poses are written as they are (TUS-REC has no status).

    Parameters
    ----------
    calib_path : where to write the csv; default ``calib_matrix.csv`` in the folder of ``path``.
    """
    import h5py

    path = Path(path)
    tforms = _probe_to_tracker(sweep)
    spacing = _spacing_of(sweep)
    image_to_probe = sweep.image_to_probe
    if image_to_probe is None:
        if "ProbeToTracker" in sweep.transforms:
            raise InputError("the sweep has ProbeToTracker but no image_to_probe calibration", sweep.source)
        image_to_probe = geometry.scaling([spacing[0], spacing[1], 1.0])
    calibration = TusRecCalibration.from_image_to_probe(image_to_probe, spacing)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("frames", data=sweep.frames)  # the sweep's own pixel type
            f.create_dataset("tforms", data=np.asarray(tforms, dtype=dtype))
    write_tusrec_calibration(calibration, calib_path if calib_path is not None else path.parent / CALIB_FILENAME)


# ---------------------------------------------------------------------------- frame conventions


def image_centre_offset(spacing=TUSREC_SPACING, frame_shape=TUSREC_FRAME_SHAPE) -> np.ndarray:
    """``D``: DualTrack's image-centred mm frame -> TUS-REC's image-mm frame (1-based pixels × spacing).

    ``D = translate(((W + 1) / 2) sx, ((H + 1) / 2) sy, 0)`` = translate(320.5 sx, 240.5 sy, 0) for
    640 x 480 frames: the 0-based pixel (c, r) sits at ((c - (W-1)/2) sx, ...) in DualTrack's frame
    and at ((c + 1) sx, ...) in TUS-REC's.
    """
    sx, sy = (float(v) for v in spacing)
    h, w = frame_shape
    return geometry.translation([(w + 1) / 2.0 * sx, (h + 1) / 2.0 * sy, 0.0])


def tusrec_to_dualtrack_transforms(transforms, spacing=TUSREC_SPACING, frame_shape=TUSREC_FRAME_SHAPE) -> np.ndarray:
    """Image-to-image transforms (..., 4, 4) in TUS-REC's image-mm frame -> DualTrack's centred frame:
    ``D^-1 · T · D`` (for global and local transforms alike)."""
    d = image_centre_offset(spacing, frame_shape)
    return geometry.compose(geometry.invert(d), geometry.as_matrix_stack(transforms), d)


def dualtrack_to_tusrec_transforms(transforms, spacing=TUSREC_SPACING, frame_shape=TUSREC_FRAME_SHAPE) -> np.ndarray:
    """Inverse of :func:`tusrec_to_dualtrack_transforms`: ``D · T · D^-1``."""
    d = image_centre_offset(spacing, frame_shape)
    return geometry.compose(d, geometry.as_matrix_stack(transforms), geometry.invert(d))


def tusrec_pair_transforms(tforms, calib: TusRecCalibration, kind: str = "global") -> np.ndarray:
    """The challenge's frame-pair transforms in image mm: ``T_{a<-b} = R_T^-1 · tforms[a]^-1 · tforms[b] · R_T``.

    Parameters
    ----------
    tforms : (N, 4, 4) tool -> camera poses.
    calib : the scan's calibration (only ``R_T`` is used).
    kind : ``"global"``: pairs (0, n), n = 1..N-1 (frame n -> frame 0); ``"local"``: pairs (n-1, n)
        (frame n -> frame n-1).

    Returns
    -------
    (N-1, 4, 4) float64, mapping image-mm points of frame b into frame a.
    """
    t = geometry.as_matrix_stack(tforms, "tforms")
    if t.ndim != 3 or len(t) < 2:
        raise ValueError(f"tforms must be (N >= 2, 4, 4), got {t.shape}")
    if kind == "global":
        a = np.zeros(len(t) - 1, dtype=int)
    elif kind == "local":
        a = np.arange(len(t) - 1)
    else:
        raise ValueError(f"kind must be 'global' or 'local', got {kind!r}")
    b = np.arange(1, len(t))
    rt = np.asarray(calib.image_to_tool, float)
    return geometry.compose(geometry.invert(rt), geometry.invert(t[a]), t[b], rt)


def read_tusrec_landmarks(path: str | os.PathLike, scan: str | None = None):
    """Read a TUS-REC landmark file (``landmark_<subject>.h5``: one (K, 3) integer dataset per scan,
    rows ``[frame index, x, y]`` with **1-based** pixel x (column) and y (row)).

    Parameters
    ----------
    path : the landmark h5 file.
    scan : a scan name (e.g. ``"RH_Par_L_DtP"``, a trailing ``.h5`` is ignored) to get one array;
        None for all scans.

    Returns
    -------
    (K, 3) int64 array for ``scan``, or a dict scan name -> array. Convert to freehand3d's 0-based
    pixels with ``landmarks[:, 1:] - 1``; the frame index is used as is (frame f's error is read from
    the frame-pair transform of frame f, row f - 1 of the (N-1, ...) stacks).

    Raises
    ------
    InputError
        Unreadable file, unknown scan, or a dataset that is not (K, 3) integers.
    """
    import h5py

    path = Path(path)

    def check(name: str, value) -> np.ndarray:
        arr = np.asarray(value)
        if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer):
            raise InputError(f"landmarks of scan '{name}' must be (K, 3) integers, got {arr.dtype} {arr.shape}", path)
        return arr.astype(np.int64)

    try:
        with h5py.File(path, "r") as f:
            if scan is not None:
                key = scan[:-3] if scan.endswith(".h5") else scan
                if key not in f:
                    raise InputError(f"no landmarks for scan '{key}' (has {len(f.keys())} scans)", path)
                return check(key, _read_dataset(f, key, path))
            return {name: check(name, _read_dataset(f, name, path)) for name in f.keys()}
    except (OSError, KeyError, RuntimeError, ValueError) as exc:  # h5py: damaged superblock / object headers
        raise InputError(f"not a readable HDF5 file ({exc})", path) from None
