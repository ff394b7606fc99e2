"""The output grid of a reconstruction and its conversion to SimpleITK images.

PLUS's rule for the default grid (``vtkIGSIOVolumeReconstructor::SetOutputExtentFromFrameList``):
the origin is the minimum corner of the bounding box of the clip-rectangle corners of every frame
with a valid pose, in the reference frame, and the number of voxels along each axis is
``round((max - min) / spacing) + 1``. The grid axes are the reference axes (identity direction).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from freehand3d.errors import ConfigError, InputError, ResourceError


@dataclass(frozen=True)
class OutputGrid:
    """A regular voxel grid in the reference frame.

    Attributes
    ----------
    origin : (x, y, z) mm, centre of voxel (0, 0, 0).
    spacing : (sx, sy, sz) mm.
    size : (nx, ny, nz) voxels. Arrays on this grid are indexed (z, y, x).
    """

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]

    def __post_init__(self):
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.origin) != 3 or len(self.spacing) != 3 or len(self.size) != 3:
            raise ValueError("origin, spacing and size need 3 values each")
        if min(self.spacing) <= 0 or not all(math.isfinite(v) for v in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if min(self.size) < 1:
            raise ValueError(f"size must be at least 1 voxel per axis, got {self.size}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (nz, ny, nx)."""
        return self.size[2], self.size[1], self.size[0]

    @property
    def n_voxels(self) -> int:
        return self.size[0] * self.size[1] * self.size[2]

    @property
    def reference_to_voxel(self) -> np.ndarray:
        """4x4 mapping reference mm to continuous voxel indices (x, y, z)."""
        m = np.eye(4)
        m[:3, :3] = np.diag(1.0 / np.asarray(self.spacing))
        m[:3, 3] = -np.asarray(self.origin) / np.asarray(self.spacing)
        return m

    def world_to_index(self, points) -> np.ndarray:
        """Nearest voxel index (x, y, z) of reference points (..., 3)."""
        p = np.asarray(points, float)
        return np.floor((p - np.asarray(self.origin)) / np.asarray(self.spacing) + 0.5).astype(np.int64)

    def index_to_world(self, index) -> np.ndarray:
        """Reference position (mm) of voxel indices (..., 3) in (x, y, z) order."""
        return np.asarray(self.origin) + np.asarray(index, float) * np.asarray(self.spacing)

    def to_image(self, array: np.ndarray):
        """SimpleITK image of a (nz, ny, nx) array on this grid (origin, spacing, identity direction)."""
        import SimpleITK as sitk

        arr = np.asarray(array)
        if arr.shape != self.shape:
            raise ValueError(f"array shape {arr.shape} does not match the grid {self.shape}")
        image = sitk.GetImageFromArray(arr)
        image.SetOrigin(self.origin)
        image.SetSpacing(self.spacing)
        image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return image

    @classmethod
    def from_extent(cls, origin, spacing, extent) -> "OutputGrid":
        """Grid from a PLUS OutputOrigin / OutputSpacing / OutputExtent (inclusive index ranges).

        PLUS keeps the origin at index 0 and lets the extent start elsewhere; here the origin is
        moved to the first voxel of the extent."""
        e = [int(v) for v in extent]
        o = [origin[i] + e[2 * i] * spacing[i] for i in range(3)]
        return cls(tuple(o), tuple(spacing), tuple(e[2 * i + 1] - e[2 * i] + 1 for i in range(3)))


def grid_from_frames(
    image_to_reference,
    frame_shape: tuple[int, int],
    spacing,
    clip_origin=None,
    clip_size=None,
    valid=None,
) -> OutputGrid:
    """PLUS's default output grid: the bounding box of the clip-rectangle corners of all valid frames.

    Parameters
    ----------
    image_to_reference : (N, 4, 4) pixels -> reference mm.
    frame_shape : (H, W) pixels.
    spacing : float or (sx, sy, sz) mm.
    clip_origin, clip_size : PLUS clip rectangle (x, y) pixels, or None for the whole frame.
    valid : (N,) bool, frames to use (default: all with a finite matrix).

    Returns
    -------
    OutputGrid with ``size = round((max - min) / spacing) + 1``.
    """
    mats = np.asarray(image_to_reference, float).reshape(-1, 4, 4)
    ok = np.isfinite(mats).all(axis=(1, 2))
    if valid is not None:
        ok &= np.asarray(valid, bool)
    if not ok.any():
        raise InputError("no frame has a valid ImageToReference pose, so the volume extent is unknown")
    spacing = np.broadcast_to(np.asarray(spacing, float), (3,))
    height, width = frame_shape
    min_x, max_x, min_y, max_y = 0.0, float(width - 1), 0.0, float(height - 1)
    if clip_origin is not None and clip_size is not None and clip_size[0] > 0 and clip_size[1] > 0:
        # the same corners as PLUS's AddImageToExtent: rectangle limited to the frame, fan ignored
        min_x = max(min_x, clip_origin[0])
        max_x = min(max_x, clip_origin[0] + clip_size[0])
        min_y = max(min_y, clip_origin[1])
        max_y = min(max_y, clip_origin[1] + clip_size[1])
    corners = np.array([[min_x, min_y, 0, 1], [min_x, max_y, 0, 1], [max_x, min_y, 0, 1], [max_x, max_y, 0, 1]])
    pts = np.einsum("nij,cj->nci", mats[ok], corners)[..., :3].reshape(-1, 3)
    low, high = pts.min(axis=0), pts.max(axis=0)
    # np.round is half-to-even, C++ std::round is half-away-from-zero; ranges are positive
    dims = np.floor((high - low) / spacing + 0.5).astype(np.int64) + 1
    return OutputGrid(tuple(low), tuple(spacing), tuple(int(d) for d in dims))


def default_max_memory() -> int:
    """Half of the memory available now (or of the total when unknown), in bytes."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        return int(info.get("MemAvailable", info.get("MemTotal")) * 0.5)
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5)
        except (ValueError, OSError, AttributeError):
            return 8 * 1024**3


def estimate_bytes(grid: OutputGrid, bytes_per_voxel: float, fixed: int = 0) -> int:
    """Bytes needed: ``fixed`` plus ``bytes_per_voxel`` per voxel of ``grid``."""
    return int(fixed + grid.n_voxels * float(bytes_per_voxel))


#: Peak memory of a reconstruction (insert, hole filling, building the image, writing) above what
#: the process held before, as peak RSS: the live buffers of each phase, counted from the code, and
#: the largest phase counts (phases run one after another and free their temporaries):
#:
#: - insertion (compiled kernels): value + accumulation buffers (uint8 frames: int32/float32 + 4 =
#:   8 B/voxel), the pasted pixels' flat frame index (8 B/pixel) and, for nearest neighbour, the
#:   recorded voxel index of the pixels of ``record_frames`` frames (about 2**20 pixels, 8 B each;
#:   both kept by the Reconstructor until it goes, so they count in every phase);
#: - result: the buffers, the output volume (its type's bytes) and :data:`RESULT_TEMP_BYTES` of
#:   chunk temporaries; building the SimpleITK image copies the output once more;
#: - hole filling (compiled, uint8): buffers + volume + filled mask + filled copy + remaining mask
#:   (8 + 1 + 1 + 1 + 1 = 12 B/voxel), plus per kernel :data:`FILL_EXTRA_BYTES_PER_VOXEL`, plus
#:   per thread and z-slice scratch for the separable kernels (:data:`SLICE_BYTES_PER_PIXEL` x nx x ny);
#: - writing: the image (1 B/voxel) and the writer's buffers: below the phases above.
#:
#: :data:`FIXED_BYTES` (allocator slack, thread pools, mask runs) is the one fitted constant: two runs
#: of the 39-point grid (docs/compound.md "Memory guard", benchmarks/bench_memory_guard.py, 1.6-25
#: Mvoxel) leave -0.7 .. 5.8 MiB above the counted buffers (gap's distance transform aside); with
#: 2 MiB every measured peak is within 0.974 .. 1.059 of its budget (budget / measured).
FIXED_BYTES = 2 * 1024**2
#: the result's temporaries per voxel of a PasteState.RESULT_CHUNK (2**18 voxels): uint8 MEAN of float
#: sums at most four float32 arrays at once (16 B), uint8 LATEST / MAX / PLUS's integer MEAN the
#: int32 clip and its uint8 cast (8 B, rounded up), other types up to four float64 arrays (32 B)
RESULT_TEMP_BYTES = {"float_sums": 16 * (1 << 18), "kept": 8 * (1 << 18), "other": 32 * (1 << 18)}
#: bytes per voxel a hole-filling kernel adds to the 12 of every compiled filler: GAUSSIAN_ACCUMULATION
#: reads the accumulation as float64 (a copy); GAP's scipy distance transform (taken when more than
#: 4096 neighbour offsets would be needed) holds int8 input, int32 (3, ...) feature indices, their
#: int32 differences and the float64 (3, ...) squared distances at once (1 + 12 + 12 + 24 = 49,
#: +1 for its inverted mask = 50)
FILL_EXTRA_BYTES_PER_VOXEL = {"GAUSSIAN": 0.0, "GAUSSIAN_ACCUMULATION": 8.0, "NEAREST_NEIGHBOR": 0.0,
                              "DISTANCE_WEIGHT_INVERSE": 0.0, "STICK": 0.0, "GAP": 0.0, "GAP_EDT": 50.0}
#: separable kernels (Gaussian, Gaussian-accumulation, nearest neighbour): six float64 planes and a
#: bool plane per z-slice being filled, one slice per thread
SLICE_BYTES_PER_PIXEL = 49
#: the torch path (CUDA, or backend="torch") keeps an int64 order buffer for LATEST / MAX
TORCH_ORDER_BYTES_PER_VOXEL = 8.0
#: torch hole filling (non-uint8 volumes, backend="torch"): whole-volume float64 values, known mask,
#: accumulation and convolution results (not measured: an estimate, 10 float64 arrays)
TORCH_FILL_BYTES_PER_VOXEL = 80.0
#: pixels per frame assumed when the pixel mask is not known yet (a Reconstructor without a mask)
DEFAULT_FRAME_PIXELS = 1 << 20


def _result_temp(pixel_type, output_type, mode: str, exact_plus: bool) -> int:
    if not pixel_type == output_type == np.uint8:
        return RESULT_TEMP_BYTES["other"]
    return RESULT_TEMP_BYTES["float_sums" if (mode == "mean" and not exact_plus) else "kept"]


def _kernel_kind(kernel) -> str:
    kind = getattr(kernel, "type", None)
    return "GAP" if kind is None else str(kind).upper()


def _gap_uses_edt(kernel, spacing) -> bool:
    """Whether the compiled gap fill falls back to scipy's distance transform (see holes.py)."""
    if spacing is None:
        return True
    from freehand3d.compound import _hole_kernels
    from freehand3d.compound.holes import _GAP_MAX_OFFSETS

    return _hole_kernels.gap_offsets(float(kernel.max_distance), tuple(float(v) for v in spacing), _GAP_MAX_OFFSETS) is None


def memory_terms(n_voxels: int, method: str, compounding: str, exact_plus: bool, backend: str = "numba",
                 fill_kernels=None, pixel_type=np.uint8, output_type=np.uint8, *, shape=None, spacing=None,
                 frame_pixels: int | None = None, threads: int | None = None) -> tuple[float, float]:
    """``(fixed bytes, bytes per voxel)`` of the largest phase of a reconstruction (see the notes
    above :data:`FIXED_BYTES`); :func:`memory_budget` is ``fixed + n_voxels x per voxel``.

    ``shape`` (nz, ny, nx) sizes the hole fillers' slice scratch (default: a cube of ``n_voxels``),
    ``spacing`` (x, y, z mm) decides the gap fill's path (default: the distance transform, the
    larger), ``frame_pixels`` the pasted pixels per frame (default 2**20), ``threads`` numba's
    thread count (default: numba's)."""
    from freehand3d.compound.insert import _TORCH_TYPES, accumulation_dtype

    pixel_type, output_type = np.dtype(pixel_type), np.dtype(output_type)
    mode = "mean" if compounding == "importance" else compounding
    value = 4 if pixel_type == np.uint8 else accumulation_dtype(pixel_type).itemsize
    state = float(value + max(4, value))  # value + accumulation buffers (PasteState)
    if backend == "torch" and mode in ("latest", "max"):
        state += TORCH_ORDER_BYTES_PER_VOXEL
    out = float(output_type.itemsize)
    torch_out = np.dtype(str(_TORCH_TYPES[output_type]).replace("torch.", ""))  # torch has no uint16 / uint32
    cast = float(out) if torch_out != output_type else 0.0  # the numpy cast to the output type copies
    pixels = DEFAULT_FRAME_PIXELS if frame_pixels is None else max(1, int(frame_pixels))
    fixed = FIXED_BYTES + (8.0 * pixels if backend == "numba" else 0.0)
    # phase by phase: (fixed, per voxel)
    if backend == "numba" and method == "nearest":  # the recorded voxel indices, kept by the Reconstructor
        from freehand3d.compound._kernels import record_frames

        fixed += 8.0 * pixels * record_frames(pixels)
    phases = [(fixed, state),
              (fixed + _result_temp(pixel_type, output_type, mode, exact_plus), state + torch_out.itemsize + cast),
              (fixed, state + 2 * out)]
    kernels = list(fill_kernels or ())
    if kernels:
        if backend == "numba" and output_type == np.uint8:
            nz, ny, nx = shape if shape is not None else (round(n_voxels ** (1 / 3)),) * 3
            if threads is None:
                import numba

                threads = numba.get_num_threads()
            for k in kernels:
                kind = _kernel_kind(k)
                if kind == "GAP" and _gap_uses_edt(k, spacing):
                    kind = "GAP_EDT"
                extra = FILL_EXTRA_BYTES_PER_VOXEL.get(kind, max(FILL_EXTRA_BYTES_PER_VOXEL.values()))
                scratch = (threads * SLICE_BYTES_PER_PIXEL * ny * nx
                           if kind in ("GAUSSIAN", "GAUSSIAN_ACCUMULATION", "NEAREST_NEIGHBOR") else 0.0)
                phases.append((fixed + scratch, state + 2 * out + 2 + extra))
        else:
            phases.append((fixed, state + 2 * out + 2 + TORCH_FILL_BYTES_PER_VOXEL))
    n = max(int(n_voxels), 1)
    worst = max(phases, key=lambda p: p[0] + n * p[1])
    return float(worst[0]), float(worst[1])


def memory_budget(n_voxels: int, method: str, compounding: str, exact_plus: bool, backend: str = "numba",
                  fill_kernels=None, pixel_type=np.uint8, output_type=np.uint8, **where) -> int:
    """Bytes a reconstruction of ``n_voxels`` voxels needs at its peak (see :func:`memory_terms`
    for ``where``: shape, spacing, frame_pixels, threads)."""
    fixed, per_voxel = memory_terms(n_voxels, method, compounding, exact_plus, backend, fill_kernels, pixel_type,
                                    output_type, **where)
    return int(fixed + n_voxels * per_voxel)


def _grid_shape_at(grid: OutputGrid, spacing: float) -> tuple[int, int, int]:
    """(nz, ny, nx) of the same extent at an isotropic ``spacing`` (the grid rule: floor(extent / s) + 1)."""
    # +1 voxel of slack for a shifted origin
    nx, ny, nz = (int(math.floor((size - 1) * sp / spacing + 1e-9)) + 2 for size, sp in zip(grid.size, grid.spacing))
    return nz, ny, nx


def _grid_voxels_at(grid: OutputGrid, spacing: float) -> int:
    """Voxels of the same extent at an isotropic ``spacing``."""
    nz, ny, nx = _grid_shape_at(grid, spacing)
    return nz * ny * nx


def check_memory(grid: OutputGrid, bytes_per_voxel: float, max_memory: int | None, fixed: int = 0,
                 need_at=None) -> None:
    """Raise :class:`ResourceError` (before anything is allocated) when ``fixed + bytes_per_voxel``
    per voxel would exceed ``max_memory`` bytes, naming a spacing that fits (checked on the grid
    that spacing gives, with ``need_at(n_voxels, spacing)`` when given: the budget's largest phase
    and the gap fill's path can change with the volume's size)."""
    limit = default_max_memory() if max_memory is None else int(max_memory)
    need = estimate_bytes(grid, bytes_per_voxel, fixed)
    if need <= limit:
        return
    extent_mm = [(n - 1) * s for n, s in zip(grid.size, grid.spacing)]
    advice = "raise --max-memory"
    if limit > fixed or need_at is not None:  # (need_at knows the fixed part of coarser grids)
        # voxel count scales with spacing**-3: start there, then step up until the new grid fits (with
        # need_at from half that: a coarser grid may need fewer bytes per voxel, e.g. the gap fill's path)
        suggested = max(grid.spacing) * (need / limit) ** (1.0 / 3.0)
        if need_at is not None:
            suggested = max(max(grid.spacing), suggested / 2)
        for _ in range(200):
            rounded = float(f"{suggested:.2g}")
            if rounded < suggested:
                rounded = float(f"{suggested * 1.05:.2g}")
            n_new = _grid_voxels_at(grid, rounded)
            if (need_at(n_new, rounded) if need_at is not None else fixed + n_new * float(bytes_per_voxel)) <= limit:
                advice = f"use a spacing of at least {rounded:g} mm or raise --max-memory"
                break
            suggested = rounded * 1.05
    raise ResourceError(
        f"a {grid.size[0]}x{grid.size[1]}x{grid.size[2]} voxel volume "
        f"({extent_mm[0]:.0f}x{extent_mm[1]:.0f}x{extent_mm[2]:.0f} mm at {grid.spacing[0]:g} mm) needs "
        f"{need / 1024**3:.2f} GiB but the limit is {limit / 1024**3:.2f} GiB; {advice}",
        "spacing",
    )


__all__ = ["OutputGrid", "grid_from_frames", "default_max_memory", "estimate_bytes", "check_memory", "memory_budget", "memory_terms"]


# ====================================================================== incremental reconstruction
class Reconstructor:
    """Incremental freehand reconstruction into a fixed grid (live use and the batch path).

    Parameters
    ----------
    grid : OutputGrid
        The output grid in the reference frame.
    method : "nearest" or "linear"
        Pixel nearest-neighbour or trilinear splatting.
    compounding : "latest", "max", "mean" or "importance"
        How overlapping pixels combine (PLUS's LATEST, MAXIMUM, MEAN, IMPORTANCE_MASK).
    mask : (H, W) bool, optional
        Pixels to paste (see :mod:`freehand3d.compound.masks`); default: every pixel.
    pixel_rejection_threshold : float, optional
        Pixels darker than this are not pasted (PLUS's PixelRejectionThreshold).
    importance_mask : (H, W) uint8, optional
        Per-pixel weights for ``compounding="importance"``.
    exact_plus : bool
        Reproduce PLUS's arithmetic exactly (fixed-point positions, running integer means).
    fixed_point : bool
        With ``exact_plus``: PLUS's Optimization FULL (True) or PARTIAL/NONE (False, double).
    fill_holes : list of HoleFillingElement or "gap:<mm>" style spec, optional
        Applied by :meth:`volume` (see :func:`freehand3d.compound.holes.fill_holes`).
    device : str or torch.device
        "cpu" or "cuda".
    backend : "numba", "torch" or None
        How pixels are pasted: compiled CPU kernels (:mod:`freehand3d.compound._kernels`, the
        default on CPU) or vectorised torch scatters (the default, and the only choice, on CUDA).
        Both give identical volumes and accumulation buffers.
    max_memory : int, optional
        Byte limit for the buffers; default half of the available RAM.
    pixel_type : numpy dtype
        Type of the frames :meth:`add_frames` will get (any :data:`freehand3d.sweep.PIXEL_TYPES`).
        uint8 runs the original integer / float32 path; other types accumulate in floats (float32
        for 8/16-bit integers and float32, float64 for 32-bit integers and float64) through the same
        compiled kernels or torch scatters (fast arithmetic only; both give the same volumes).
    output_type : numpy dtype, optional
        Type of the volume (default: ``pixel_type``). MEAN / importance give the weighted mean,
        LATEST / MAXIMUM the pixel value; integer outputs round ``floor(x + 0.5)`` and clip to the
        type's range, float outputs are not rounded.
    pixels_per_batch : int
        How many pixels one vectorised step handles (bounds temporary memory).

    Examples
    --------
    >>> grid = OutputGrid((0, 0, 0), (1, 1, 1), (4, 4, 2))
    >>> rec = Reconstructor(grid, method="nearest", compounding="max")
    >>> rec.add_frame(np.full((4, 4), 9, np.uint8), np.eye(4))
    >>> int(rec.volume_array()[0].sum()), int(rec.volume_array()[1].sum())
    (144, 0)
    """

    def __init__(
        self,
        grid: OutputGrid,
        method: str = "nearest",
        compounding: str = "mean",
        *,
        mask=None,
        pixel_rejection_threshold: float | None = None,
        importance_mask=None,
        exact_plus: bool = False,
        fixed_point: bool = True,
        fill_holes=None,
        device="cpu",
        backend: str | None = None,
        max_memory: int | None = None,
        pixels_per_batch: int = 2_000_000,
        pixel_type=np.uint8,
        output_type=None,
    ):
        import torch

        from freehand3d.compound.insert import COMPOUNDINGS, METHODS, PasteState
        from freehand3d.sweep import PIXEL_TYPES

        self.pixel_type = np.dtype(pixel_type)
        self.output_type = self.pixel_type if output_type is None else np.dtype(output_type)
        for what, dt in (("pixel_type", self.pixel_type), ("output_type", self.output_type)):
            if dt not in PIXEL_TYPES:
                raise ConfigError(f"{dt} is not a volume type; use one of {', '.join(t.name for t in PIXEL_TYPES)}", what)

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if compounding not in COMPOUNDINGS:
            raise ValueError(f"compounding must be one of {COMPOUNDINGS}, got {compounding!r}")
        if compounding == "importance" and importance_mask is None:
            raise ValueError("compounding='importance' needs an importance_mask")
        self.grid = grid
        self.method = method
        self.compounding = compounding
        self.exact_plus = bool(exact_plus)
        self.fixed_point = bool(fixed_point)
        self.pixel_rejection_threshold = pixel_rejection_threshold
        self.fill_holes_spec = fill_holes
        self.device = torch.device(device)
        if backend is None:
            backend = "numba" if self.device.type == "cpu" else "torch"
        if backend not in ("numba", "torch"):
            raise ConfigError(f"backend must be 'numba' or 'torch', got {backend!r}", "backend")
        if backend == "numba" and self.device.type != "cpu":
            raise ConfigError(f"the numba backend runs on the CPU only; use backend='torch' on {self.device}", "backend")
        self.backend = backend
        self.pixels_per_batch = int(pixels_per_batch)
        if self.pixel_type != np.uint8:
            if self.exact_plus:
                raise ConfigError(
                    f"PLUS's exact arithmetic is defined for uint8 frames; {self.pixel_type} frames use the "
                    "float path (exact_plus=False)", "exact_plus")
        # pixels are integers: "value >= threshold" is "value >= ceil(threshold)", one rule for every path
        self._min_value = 0
        if pixel_rejection_threshold is not None and not math.isfinite(float(pixel_rejection_threshold)):
            raise ConfigError(f"must be finite, got {pixel_rejection_threshold}", "pixel_rejection_threshold")
        if self.pixel_type == np.uint8:
            if pixel_rejection_threshold is not None:
                self._min_value = int(min(max(math.ceil(float(pixel_rejection_threshold)), 0), 256))
        elif self.pixel_type.kind == "f":  # no threshold: negative values are pixels too
            self._min_value = -math.inf if pixel_rejection_threshold is None else float(pixel_rejection_threshold)
        else:
            self._min_value = (np.iinfo(np.int64).min if pixel_rejection_threshold is None
                               else int(math.ceil(float(pixel_rejection_threshold))))
        # the guard runs before any buffer exists
        kernels = fill_holes
        if isinstance(kernels, str):
            from freehand3d.compound.holes import parse_fill_spec

            kernels = parse_fill_spec(kernels)
        pasted = None if mask is None else int(np.count_nonzero(mask))
        terms = dict(shape=grid.shape, spacing=grid.spacing, frame_pixels=pasted)
        fixed, per_voxel = memory_terms(grid.n_voxels, method, compounding, exact_plus, backend, kernels,
                                        self.pixel_type, self.output_type, **terms)
        self.budget = int(fixed + grid.n_voxels * per_voxel)

        def need_at(n_voxels, spacing):  # a coarser suggestion: its own largest phase, slices and gap path
            return memory_budget(n_voxels, method, compounding, exact_plus, backend, kernels, self.pixel_type,
                                 self.output_type, **{**terms, "spacing": (spacing,) * 3,
                                                      "shape": _grid_shape_at(grid, spacing)})

        check_memory(grid, per_voxel, max_memory, fixed=int(fixed), need_at=need_at)
        self._state = PasteState(grid.n_voxels, compounding, self.exact_plus, self.device, self.pixel_type)
        self._user_mask = None if mask is None else np.asarray(mask, bool)
        self._importance = None if importance_mask is None else np.asarray(importance_mask, np.uint8)
        self._frame_shape = None
        self.frames_added = 0

    # ------------------------------------------------------------------ pixel list
    def _prepare(self, frame_shape) -> None:
        import torch

        if self._frame_shape == tuple(frame_shape):
            return
        if self._frame_shape is not None:
            raise ValueError(f"frame shape changed from {self._frame_shape} to {tuple(frame_shape)}")
        mask = np.ones(frame_shape, bool) if self._user_mask is None else self._user_mask
        if mask.shape != tuple(frame_shape):
            raise ValueError(f"mask shape {mask.shape} does not match the frames {tuple(frame_shape)}")
        if self._importance is not None and self._importance.shape != tuple(frame_shape):
            raise ValueError(f"importance mask shape {self._importance.shape} does not match the frames")
        if self.backend == "numba":  # the compiled kernels walk the mask's row runs, nothing else
            from freehand3d.compound._kernels import PixelRuns

            self._runs = PixelRuns(mask)
            self._record_scratch = None  # nearest's recorded voxel indices, allocated once (see memory_terms)
            self._frame_shape = tuple(frame_shape)
            return
        rows, cols = np.nonzero(mask)  # row-major: PLUS's pixel order within a frame
        self._pixel_flat = torch.as_tensor(rows * frame_shape[1] + cols, dtype=torch.int64, device=self.device)
        self._pixel_xy = torch.as_tensor(np.stack([cols, rows], 1), dtype=torch.int64, device=self.device)
        self._pixel_xy_float = None
        self._full_mask = bool(mask.all())
        if len(cols):
            bx, by = int(cols.min()), int(rows.min())
            bw, bh = int(cols.max()) - bx + 1, int(rows.max()) - by + 1
        else:
            bx = by = 0
            bw = bh = 1
        self._box = (bx, by, bw, bh)
        self._pixel_in_box = torch.as_tensor((rows - by) * bw + (cols - bx), dtype=torch.int64, device=self.device)
        x0, x1, y0, y1 = (cols.min(), cols.max(), rows.min(), rows.max()) if len(cols) else (0, 0, 0, 0)
        # homogeneous (x, y, 0, 1) corners of the pasted pixels' bounding box
        self._corner_xy1 = np.array([[x0, y0, 0, 1], [x1, y0, 0, 1], [x0, y1, 0, 1], [x1, y1, 0, 1]], float)
        self._pixel_importance = (
            None
            if self._importance is None or self.compounding != "importance"
            else torch.as_tensor(self._importance[rows, cols], device=self.device)
        )
        self._frame_shape = tuple(frame_shape)

    # ------------------------------------------------------------------ insertion
    def add_frame(self, frame, image_to_reference) -> None:
        """Paste one (H, W) uint8 frame whose pixel (x=column, y=row) maps to the reference by
        ``image_to_reference`` (4x4, pixels -> mm)."""
        self.add_frames(np.asarray(frame)[None], np.asarray(image_to_reference, float)[None])

    def add_frames(self, frames, image_to_reference) -> None:
        """Paste (B, H, W) uint8 frames with their (B, 4, 4) poses, in order (later frames win in
        LATEST compounding). Frames with a non-finite pose are skipped."""
        import torch

        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        mats = np.asarray(image_to_reference, float).reshape(-1, 4, 4)
        if len(mats) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(mats)} poses")
        if frames.dtype != self.pixel_type:
            raise ValueError(f"frames must be {self.pixel_type} (the Reconstructor's pixel_type), got {frames.dtype}")
        ok = np.isfinite(mats).all(axis=(1, 2))
        if not ok.all():  # (a boolean index copies the frames: only when some must go)
            frames, mats = frames[ok], mats[ok]
        if len(frames) == 0:
            return
        self._prepare(frames.shape[1:])
        pix_to_vox = self.grid.reference_to_voxel @ mats
        if self.backend == "numba":
            self._paste_numba(frames, pix_to_vox)
            self.frames_added += len(frames)
            return
        n_pixels = max(1, self._pixel_flat.numel())
        per_batch = max(1, self.pixels_per_batch // (n_pixels * (8 if self.method == "linear" else 1)))
        for start in range(0, len(frames), per_batch):
            chunk = frames[start : start + per_batch]
            if self.pixel_type != np.uint8:  # the torch scatters work on the float buffer type
                chunk = chunk.astype(np.float64 if self._state.value.dtype == torch.float64 else np.float32)
            chunk = torch.as_tensor(chunk, device=self.device)
            self._paste(chunk, pix_to_vox[start : start + per_batch])
        self.frames_added += len(frames)

    def _paste_numba(self, frames: np.ndarray, pix_to_vox: np.ndarray) -> None:
        """Compiled kernels: pixel by pixel in PLUS's order, straight into the state's buffers."""
        from freehand3d.compound import _kernels

        if self.exact_plus:
            arith = _kernels.FIXED if self.fixed_point else _kernels.DOUBLE
        else:
            arith = _kernels.SINGLE
        state = self._state
        if self.method == "nearest" and self._record_scratch is None:
            self._record_scratch = np.empty((_kernels.record_frames(self._runs.n_pixels), self._runs.n_pixels), np.int64)
        state.overflow_count += _kernels.paste(
            self.method,
            arith,
            _kernels.MODE_CODES[self.compounding],
            frames,
            pix_to_vox,
            self._runs,
            self._importance if self.compounding == "importance" else None,
            self._min_value,
            self.grid.size,
            state.value.numpy(),
            state.acc.numpy(),
            scratch=self._record_scratch,
        )

    def _paste(self, frames, pix_to_vox: np.ndarray) -> None:
        import torch

        from freehand3d.compound.insert import (
            FIXED_BITS,
            FIXED_HALF,
            FIXED_ONE,
            FLOOR_TOL,
            voxel_positions_fixed,
            voxel_positions_float,
        )

        if not self.exact_plus:
            self._paste_fast(frames, pix_to_vox)
            return
        batch = frames.shape[0]
        values = frames.reshape(batch, -1)[:, self._pixel_flat].to(torch.int32)  # (B, P)
        keep = torch.ones_like(values, dtype=torch.bool)
        if self._min_value > 0:
            keep &= values >= self._min_value
        size = torch.as_tensor(self.grid.size, device=self.device)
        nx, ny = self.grid.size[0], self.grid.size[1]
        importance = None
        if self._pixel_importance is not None:
            importance = self._pixel_importance.unsqueeze(0).expand(batch, -1)

        if self.exact_plus and self.fixed_point:
            raw = voxel_positions_fixed(self._pixel_xy, pix_to_vox, self.device)  # (B, P, 3) int64
        else:
            dtype = torch.float64 if self.exact_plus else torch.float32
            pos = voxel_positions_float(self._pixel_xy, pix_to_vox, dtype, self.device)

        dump = torch.tensor(self.grid.n_voxels, device=self.device)
        if self.method == "nearest":
            if self.exact_plus and self.fixed_point:
                index = (raw + FIXED_HALF) >> FIXED_BITS
            elif self.exact_plus:
                index = torch.floor(pos + (0.5 + FLOOR_TOL)).to(torch.int64)
            else:
                index = torch.floor(pos + 0.5).to(torch.int64)
            keep &= ((index >= 0) & (index < size)).all(dim=-1)
            flat = torch.where(keep, (index[..., 2] * ny + index[..., 1]) * nx + index[..., 0], dump)
            weights = None if importance is None else importance.reshape(-1)
            self._state.paste_nearest(flat.reshape(-1), values.reshape(-1), weights)
            return

        # trilinear: floor, fraction and the "ceil" corner (= floor when the fraction is 0)
        if self.exact_plus and self.fixed_point:
            low = raw >> FIXED_BITS
            frac = raw - (low << FIXED_BITS)
            one = FIXED_ONE
        else:
            low = torch.floor(pos + (FLOOR_TOL if self.exact_plus else 0.0)).to(torch.int64)
            frac = pos - low.to(pos.dtype)
            one = 1.0
        high = low + (frac != 0).to(torch.int64)
        keep &= ((low >= 0) & (high < size)).all(dim=-1)
        low, high, frac = low.reshape(-1, 3), high.reshape(-1, 3), frac.reshape(-1, 3)
        keep, values = keep.reshape(-1, 1), values.reshape(-1)
        if importance is not None:
            importance = importance.reshape(-1)
        rest = one - frac
        if self.exact_plus and self.fixed_point:

            def mul(a, b):  # PLUS's fixed * fixed: rounded, arithmetic shift
                return (a * b + FIXED_HALF) >> FIXED_BITS

        else:

            def mul(a, b):
                return a * b

        fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
        rx, ry, rz = rest[:, 0], rest[:, 1], rest[:, 2]
        ryrz, ryfz, fyrz, fyfz = mul(ry, rz), mul(ry, fz), mul(fy, rz), mul(fy, fz)
        weights = torch.stack(
            [mul(rx, ryrz), mul(rx, ryfz), mul(rx, fyrz), mul(rx, fyfz), mul(fx, ryrz), mul(fx, ryfz), mul(fx, fyrz), mul(fx, fyfz)],
            dim=1,
        )
        x0, y0, z0 = low[:, 0], low[:, 1], low[:, 2]
        x1, y1, z1 = high[:, 0], high[:, 1], high[:, 2]
        # PLUS's corner order: x slowest, then y, then z
        y0z0, y0z1 = (z0 * ny + y0) * nx, (z1 * ny + y0) * nx
        y1z0, y1z1 = (z0 * ny + y1) * nx, (z1 * ny + y1) * nx
        corners = torch.stack([y0z0 + x0, y0z1 + x0, y1z0 + x0, y1z1 + x0, y0z0 + x1, y0z1 + x1, y1z0 + x1, y1z1 + x1], dim=1)
        corners = torch.where(keep, corners, dump)
        self._state.paste_linear(corners, values, weights, importance)

    def _paste_fast(self, frames, pix_to_vox: np.ndarray) -> None:
        """The fast path (float32 positions, no PLUS integer emulation) with as few full-size
        passes as possible: the flat voxel index comes from one float64 matmul of the rounded
        coordinates, and trilinear splatting runs corner by corner instead of building (M, 8)
        stacks."""
        import torch

        from freehand3d.compound.insert import MIN_SPLAT_WEIGHT

        state = self._state
        batch = frames.shape[0]
        if self._full_mask:
            values = frames.reshape(-1)  # every pixel is pasted: no gather needed
        else:
            values = frames.reshape(batch, -1).index_select(1, self._pixel_flat).reshape(-1)  # uint8 (B*P)
        # voxel coordinates are affine in (column, row): a row term plus a column term, added with
        # one broadcast over the bounding box of the pasted pixels (then the pasted ones gathered)
        x0, y0, width, height = self._box
        m = torch.as_tensor(pix_to_vox, dtype=torch.float32, device=self.device)
        cols = torch.arange(x0, x0 + width, dtype=torch.float32, device=self.device)
        rows = torch.arange(y0, y0 + height, dtype=torch.float32, device=self.device)
        row_term = m[:, None, :3, 3] + rows[None, :, None] * m[:, None, :3, 1]  # (B, Hb, 3)
        col_term = cols[None, :, None] * m[:, None, :3, 0]  # (B, Wb, 3)
        pos = (row_term[:, :, None, :] + col_term[:, None, :, :]).reshape(batch, -1, 3)
        if not self._full_mask:
            pos = pos.index_select(1, self._pixel_in_box)
        pos = pos.reshape(-1, 3)
        nx, ny, nz = self.grid.size
        upper = torch.tensor([nx - 1, ny - 1, nz - 1], dtype=torch.float32, device=self.device)
        # flat indices stay exact in float32 below 2**24 voxels; beyond, the matmul runs in float64
        flat_dtype = torch.float32 if self.grid.n_voxels < 2**24 else torch.float64
        strides = torch.tensor([1.0, nx, nx * ny], dtype=flat_dtype, device=self.device)
        dump = self.grid.n_voxels
        reject = None
        if self.pixel_type != np.uint8:
            if self.pixel_rejection_threshold is not None:
                reject = values < self._min_value
        elif self._min_value > 0:
            reject = values.to(torch.int16) < self._min_value
        importance = None
        if self._pixel_importance is not None:
            importance = self._pixel_importance.unsqueeze(0).expand(batch, -1).reshape(-1)
        # an affine map reaches its extremes at the corners of the pasted pixels' bounding box: when
        # every corner is inside the grid, so is every pixel and the per-pixel bounds test is skipped
        corners = np.einsum("bij,cj->bci", pix_to_vox[:, :3, :], self._corner_xy1)
        lowest = corners.min(axis=(0, 1))
        highest = corners.max(axis=(0, 1))
        if self.method == "nearest":
            rounded = pos.add_(0.5).floor_()
            # a margin of 1e-3 voxel covers float32 rounding of the per-pixel positions
            if (lowest >= -0.5 + 1e-3).all() and (highest <= np.array(self.grid.size) - 0.5 - 1e-3).all():
                inside = None
            else:
                inside = (rounded == torch.minimum(torch.clamp_min(rounded, 0), upper)).all(dim=1)
            if reject is not None:
                inside = ~reject if inside is None else inside & ~reject
            flat = (rounded.to(flat_dtype) @ strides).long()
            if inside is not None:
                flat.masked_fill_(~inside, dump)
            state.paste_nearest(flat, values.to(torch.int32) if self.pixel_type == np.uint8 else values, importance)
            return
        low = torch.floor(pos)
        frac = pos.sub_(low)  # in place: pos is not needed any more
        # the +1 corners must exist too (PLUS drops a pixel whose 8 corners are not all inside)
        inside = ((low >= 0) & (low < upper)).all(dim=1)
        if reject is not None:
            inside &= ~reject
        # pixels outside get voxel 0 and weight 0 on every corner: no per-corner masking needed
        # (a zero weight adds nothing to a mean and is below the LATEST/MAXIMUM threshold)
        base = (low.to(flat_dtype) @ strides).long().masked_fill_(~inside, 0)
        fx, fy, fz = frac.contiguous().unbind(1)
        inside_f = inside.to(torch.float32)
        fx = fx * inside_f
        rx = inside_f - fx
        ry, rz = 1.0 - fy, 1.0 - fz
        value_f = values.to(torch.float32 if self.pixel_type == np.uint8 else state.value.dtype)
        corners = []
        for dx, wx in ((0, rx), (1, fx)):
            for dy, wy in ((0, ry), (1, fy)):
                wxy = wx * wy
                for dz, wz in ((0, rz), (1, fz)):
                    offset = dx + nx * dy + nx * ny * dz
                    corners.append((base + offset if offset else base, wxy * wz))
        if self.compounding in ("mean", "importance"):
            # one float sum in PLUS's order (pixel by pixel, corners 7..0), the order the compiled
            # kernels add in, so that both give the same float32 sums bit for bit
            index = torch.stack([c[0] for c in reversed(corners)], 1).reshape(-1)
            weight = torch.stack([c[1] for c in reversed(corners)], 1)
            if importance is not None:
                weight = weight * importance.to(torch.float32)[:, None]
            state.value.index_add_(0, index, (weight * value_f[:, None]).reshape(-1))
            state.acc.index_add_(0, index, weight.reshape(-1).to(state.acc.dtype))
            state._clear_dump()
            return
        elif self.compounding == "max":
            value_i = values.to(torch.int32) if self.pixel_type == np.uint8 else value_f
            # PLUS counts a voxel as filled only once a brighter pixel raised it (uint8); other types:
            # any eligible pixel fills it (the compiled kernels' rule)
            lit = values > 0 if self.pixel_type == np.uint8 else torch.ones_like(values, dtype=torch.bool)
            for index, weight in corners:
                eligible = weight >= MIN_SPLAT_WEIGHT
                state.value.scatter_reduce_(0, index.masked_fill(~eligible, dump), value_i, reduce="amax")
                state.acc.index_fill_(0, index.masked_fill(~(eligible & lit), dump), 1.0)
        else:  # latest: last (pixel, then PLUS's corner order 7..0) eligible writer wins
            order = state._scratch()
            n = values.numel()
            start = state._next_order
            state._next_order += 8 * n
            pixel_rank = torch.arange(start, start + 8 * n, 8, device=self.device, dtype=torch.int64)
            targets = []
            for c, (index, weight) in enumerate(corners):
                target = index.masked_fill(weight < MIN_SPLAT_WEIGHT, dump)
                rank = pixel_rank + (7 - c)
                order.scatter_reduce_(0, target, rank, reduce="amax")
                targets.append((target, rank, weight))
            value_i = values.to(torch.int32) if self.pixel_type == np.uint8 else value_f
            for target, rank, weight in targets:
                winner = target.masked_fill(order.index_select(0, target) != rank, dump)
                state.value.scatter_(0, winner, value_i)
                state.acc.scatter_(0, winner, weight.to(state.acc.dtype))
        state._clear_dump()

    # ------------------------------------------------------------------ results
    def accumulation(self) -> np.ndarray:
        """(nz, ny, nx) accumulation buffer: PLUS units (256 = one pixel) with ``exact_plus``,
        else the sum of pixel weights. Zero marks a hole."""
        return self._state.acc[: self.grid.n_voxels].reshape(self.grid.shape).cpu().numpy()

    def volume_array(self, fill_holes=None) -> np.ndarray:
        """(nz, ny, nx) volume of ``output_type``; holes filled with ``fill_holes`` (default: the constructor's)."""
        values = self._state.result(self.output_type).reshape(self.grid.shape)
        values = values.cpu().numpy().astype(self.output_type, copy=False)  # torch has no uint16/uint32
        spec = self.fill_holes_spec if fill_holes is None else fill_holes
        if spec:
            from freehand3d.compound.holes import fill_holes as run_fill

            filled = self._state.filled().reshape(self.grid.shape)
            acc = self._state.acc[: self.grid.n_voxels].reshape(self.grid.shape).cpu().numpy()
            # the compiled hole filling takes uint8 volumes; other types go through torch
            backend = self.backend if self.output_type == np.uint8 else "torch"
            return run_fill(values, filled, spec, spacing=self.grid.spacing, accumulation=acc, device=self.device,
                            backend=backend)
        return values

    def volume(self, fill_holes=None):
        """The reconstruction as a SimpleITK image (``output_type``, origin/spacing/direction of the grid)."""
        return self.grid.to_image(self.volume_array(fill_holes))


# ====================================================================== batch reconstruction
def _load_config(config):
    """(VolumeReconstructionConfig, {name: 4x4}) from a device-set path or a parsed config."""
    if config is None:
        return None, {}
    from freehand3d.io.plus_volrec import VolumeReconstructionConfig, read_volume_reconstruction

    if isinstance(config, VolumeReconstructionConfig):
        return config, {}
    try:
        from freehand3d.io.plus_config import read_device_set
    except ImportError:  # the device-set reader is optional; the element reader is enough here
        return read_volume_reconstruction(config)
    device_set = read_device_set(config)
    cfg = device_set.volume_reconstruction
    if not isinstance(cfg, VolumeReconstructionConfig):
        from freehand3d.errors import ConfigError

        raise ConfigError("the device set has no <VolumeReconstruction> element", config)
    return cfg, {name: d.matrix for name, d in device_set.coordinate_definitions.items()}


def _sweep_with_links(sweep, extra: dict, calibration):
    """A shallow copy of ``sweep`` whose frame graph also knows the config's constant transforms
    and the calibration (neither changes the caller's sweep)."""
    import copy

    out = copy.copy(sweep)
    out.transforms = dict(sweep.transforms)
    out.valid = dict(sweep.valid)
    for name, matrix in extra.items():
        if name not in out.transforms and name.replace("To", "", 1) != name:
            out.set_transform(name, matrix)
    if calibration is not None:
        out.transforms.pop("ImageToProbe", None)
        out.valid.pop("ImageToProbe", None)
        out.image_to_probe = np.asarray(calibration, float)
    elif "ImageToProbe" in extra and sweep.image_to_probe is None:
        out.image_to_probe = np.asarray(extra["ImageToProbe"], float)
    return out


def _read_importance_mask(filename: str, config_source) -> np.ndarray:
    from pathlib import Path

    import cv2

    path = Path(filename)
    if not path.is_absolute() and config_source is not None:
        path = Path(config_source).parent / path
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise InputError("cannot read the importance mask image", path)
    # PLUS flips its PNG reader's bottom-up rows back: the mask is in ordinary row order
    return image


def reconstruct(
    sweep,
    spacing=None,
    method: str | None = None,
    compounding: str | None = None,
    *,
    config=None,
    image_to_reference: str | None = None,
    calibration=None,
    grid: OutputGrid | None = None,
    clip_origin=None,
    clip_size=None,
    fan_angles_deg=(0.0, 0.0),
    fan_origin=(0.0, 0.0),
    fan_radius_start: float = 0.0,
    fan_radius_stop: float = 500.0,
    pixel_rejection_threshold: float | None = None,
    fill_holes=None,
    exact_plus: bool | None = None,
    device="cpu",
    backend: str | None = None,
    max_memory: int | None = None,
    progress=None,
    phase=None,
    output_type=None,
    budget_out: dict | None = None,
):
    """Reconstruct a tracked sweep into a volume.

    Parameters
    ----------
    sweep : Sweep
        Frames and transforms; the pose of each frame is ``sweep.transform(image_to_reference)``.
    spacing : float or (3,) mm, optional
        Voxel size (default: the config's OutputSpacing, else 0.5 mm).
    method : "nearest" or "linear", optional (default: the config's Interpolation, else nearest).
    compounding : "latest", "max", "mean" or "importance", optional (default: the config's, else mean).
    config : path or VolumeReconstructionConfig, optional
        A PLUS device set: its ``<VolumeReconstruction>`` settings (clip rectangle, fan, output
        origin/extent, hole filling, ...) and CoordinateDefinitions (e.g. ImageToProbe) are used,
        with PLUS's exact arithmetic unless ``exact_plus=False``.
    image_to_reference : str, optional
        Name of the pose transform (default ``ImageToReference``, or the config's
        ImageCoordinateFrame/ReferenceCoordinateFrame); composed from the sweep's links.
    calibration : (4, 4), optional
        ImageToProbe (pixels -> mm) to use instead of the sweep's.
    grid : OutputGrid, optional
        Explicit output grid (default: PLUS's rule, see :func:`grid_from_frames`).
    clip_origin, clip_size, fan_angles_deg, fan_origin, fan_radius_start, fan_radius_stop :
        Pixel mask when no config is given (see :func:`freehand3d.compound.masks.frame_mask`).
    pixel_rejection_threshold : float, optional
    fill_holes : kernels or spec string, optional (default: the config's FillHoles kernels).
    exact_plus : bool, optional
        PLUS's arithmetic (default: True with a config, else False).
    device : "cpu" or "cuda".
    backend : "numba" or "torch", optional
        Compiled CPU kernels (default on CPU) or torch scatters (default on CUDA); same volumes.
    max_memory : int, optional
        Byte limit for the buffers (default: half the available RAM); a
        :class:`~freehand3d.errors.ResourceError` suggesting a spacing is raised before allocating.
    progress : callable(done, total), optional
        Called as frames are inserted.
    phase : callable(description), optional
        Called when a later long phase starts (``"filling holes"``).
    output_type : numpy dtype or name, optional
        Volume type (default: the sweep's pixel type). Any :data:`freehand3d.sweep.PIXEL_TYPES`;
        frames other than uint8 accumulate in floats (see :class:`Reconstructor`). Colour
        (N, H, W, C) frames are refused: convert them to one component first.
    budget_out : dict, optional
        Receives ``"bytes"``: the memory budget the guard checked (see :func:`memory_budget`).

    Returns
    -------
    SimpleITK.Image of ``output_type``, with origin, spacing and identity direction of the grid.
    """
    from freehand3d.compound.masks import frame_mask, mask_from_config
    from freehand3d.errors import ConfigError

    cfg, extra = _load_config(config)
    if cfg is not None and cfg.enable_fan_angles_auto_detect:
        raise ConfigError("EnableFanAnglesAutoDetect is not supported; give FanAnglesDeg explicitly", cfg.source)
    if spacing is None:
        spacing = cfg.output_spacing if cfg is not None else 0.5
    spacing = tuple(float(v) for v in np.broadcast_to(np.asarray(spacing, float), (3,)))
    if not all(math.isfinite(v) and v > 0 for v in spacing):
        raise ConfigError(f"spacing must be positive, got {spacing}", "spacing")
    method = method or (cfg.method if cfg is not None else "nearest")
    compounding = compounding or (cfg.compounding if cfg is not None else "mean")
    pixel_type = np.dtype(sweep.frames.dtype)
    if sweep.frames.ndim != 3:
        raise InputError(
            f"frames have {sweep.frames.shape[3]} components per pixel; compounding takes one "
            "(convert colour frames to grey first, e.g. freehand3d.sweep.to_uint8)", sweep.source)
    if exact_plus is None:
        # PLUS's integer arithmetic is defined for uint8; other pixel types take the float path
        exact_plus = cfg is not None and pixel_type == np.uint8
    if image_to_reference is None:
        image_to_reference = (
            f"{cfg.image_coordinate_frame}To{cfg.reference_coordinate_frame}" if cfg is not None else "ImageToReference"
        )
    working = _sweep_with_links(sweep, extra, calibration)
    mats, valid = working.transform(image_to_reference)
    valid = valid & working.image_valid
    frame_indices = np.arange(len(working))
    if cfg is not None and cfg.skip_interval > 1:
        frame_indices = frame_indices[:: cfg.skip_interval]
    frame_indices = frame_indices[valid[frame_indices]]
    if len(frame_indices) == 0:
        raise InputError(f"no frame has a valid {image_to_reference} pose", sweep.source)
    frame_shape = working.frame_shape
    if cfg is not None:
        mask = mask_from_config(frame_shape, cfg)
        clip_origin, clip_size = cfg.clip_rectangle_origin, cfg.clip_rectangle_size
        if pixel_rejection_threshold is None:
            pixel_rejection_threshold = cfg.pixel_rejection_threshold
        if fill_holes is None and cfg.fill_holes:
            fill_holes = cfg.hole_filling
    else:
        mask = frame_mask(frame_shape, clip_origin, clip_size, fan_angles_deg, fan_origin, fan_radius_start, fan_radius_stop)
    if grid is None:
        if cfg is not None and cfg.output_origin is not None and cfg.output_extent is not None:
            grid = OutputGrid.from_extent(cfg.output_origin, spacing, cfg.output_extent)
        else:
            grid = grid_from_frames(mats[frame_indices], frame_shape, spacing, clip_origin, clip_size)
    importance = None
    if compounding == "importance":
        if cfg is None or not cfg.importance_mask_filename:
            raise ConfigError("importance compounding needs a config with ImportanceMaskFilename", "compounding")
        importance = _read_importance_mask(cfg.importance_mask_filename, cfg.source)
    rec = Reconstructor(
        grid,
        method,
        compounding,
        mask=mask,
        pixel_rejection_threshold=pixel_rejection_threshold,
        importance_mask=importance,
        exact_plus=exact_plus,
        fixed_point=cfg.optimization == "FULL" if cfg is not None else True,
        fill_holes=fill_holes,
        device=device,
        backend=backend,
        max_memory=max_memory,
        pixel_type=pixel_type,
        output_type=output_type,
    )
    if budget_out is not None:
        budget_out["bytes"] = rec.budget
    # the compiled kernels need no temporary memory per frame: bigger steps, fewer calls
    step = 64 if rec.backend == "numba" else 8
    if progress is not None:  # inputs, grid and memory are checked: the work starts now
        progress(0, len(frame_indices))
    for start in range(0, len(frame_indices), step):
        chunk = frame_indices[start : start + step]
        for run in _contiguous_runs(chunk):  # slices of the sweep's frames: views, no copies
            rec.add_frames(working.frames[run], mats[run])
        if progress is not None:
            progress(min(start + step, len(frame_indices)), len(frame_indices))
    if phase is not None and rec.fill_holes_spec:
        phase("filling holes")
    return rec.volume()


def _contiguous_runs(indices: np.ndarray) -> list[slice]:
    """Increasing frame indices as slices of consecutive runs ([0, 1, 2, 5, 6] -> 0:3, 5:7)."""
    if len(indices) == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(indices)]])
    return [slice(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def write_volume_file(image, path) -> None:
    """Write a SimpleITK image atomically (``freehand3d.io.volumes.write_volume`` when available)."""
    try:
        from freehand3d.io.volumes import write_volume
    except ImportError:
        write_volume = None
    if write_volume is not None:
        write_volume(image, path)
        return
    import SimpleITK as sitk

    from freehand3d._atomic import atomic_path

    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def save_preview(image, path, title: str | None = None) -> None:
    """PNG with three orthogonal slices through the centre and a maximum intensity projection, in
    the volume's world coordinates (mm, voxel centres at origin + index x spacing), with a
    colorbar of the voxel values and the slice positions in the panel titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import SimpleITK as sitk

    from freehand3d._atomic import atomic_path

    array = sitk.GetArrayFromImage(image)  # (z, y, x)
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    nz, ny, nx = array.shape

    def edges(o, s, n):  # the outer voxel edges in mm
        return o - s / 2, o + (n - 0.5) * s

    (x0, x1), (y0, y1), (z0, z1) = edges(ox, sx, nx), edges(oy, sy, ny), edges(oz, sz, nz)
    cx, cy, cz = ox + (nx // 2) * sx, oy + (ny // 2) * sy, oz + (nz // 2) * sz
    views = [
        (f"axial slice, z = {cz:.1f} mm", array[nz // 2], (x0, x1, y1, y0), "x (mm)", "y (mm)"),
        (f"coronal slice, y = {cy:.1f} mm", array[:, ny // 2, :], (x0, x1, z1, z0), "x (mm)", "z (mm)"),
        (f"sagittal slice, x = {cx:.1f} mm", array[:, :, nx // 2], (y0, y1, z1, z0), "y (mm)", "z (mm)"),
        ("max. intensity projection along z", array.max(axis=0), (x0, x1, y1, y0), "x (mm)", "y (mm)"),
    ]
    # uint8 volumes show their full range; other types the whole volume's minimum..maximum
    vmin, vmax = (0, 255) if array.dtype == np.uint8 else (float(np.nanmin(array)), float(np.nanmax(array)))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.8))
    for ax, (panel, img, extent, xlabel, ylabel) in zip(axes, views):
        shown = ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, extent=extent, interpolation="nearest")
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    bar = fig.colorbar(shown, ax=list(axes), shrink=0.85, pad=0.01)
    bar.set_label(f"voxel value ({array.dtype}; 0 = no data / hole)")
    head = f"{title}\n" if title else ""
    fig.suptitle(f"{head}{nx}x{ny}x{nz} voxels, spacing {sx:g} x {sy:g} x {sz:g} mm, origin "
                 f"({ox:.1f}, {oy:.1f}, {oz:.1f}) mm", fontsize=11)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, bbox_inches="tight")
    plt.close(fig)
