"""Hole filling for voxels no pixel reached: PLUS's kernels, vectorised, plus a distance-limited
nearest-neighbour gap fill.

PLUS (``vtkIGSIOFillHolesInVolume``) visits every voxel whose accumulation is zero and tries its
kernels in the configured order until one succeeds; every kernel reads the *unfilled* volume, so all
holes can be filled at once. The kernels, as PLUS computes them:

``GAUSSIAN`` / ``GAUSSIAN_ACCUMULATION``
    weighted mean of the known voxels in a ``size``-cube with Gaussian weights (``stdev`` voxels),
    the latter also weighted by the accumulation value; succeeds when the fraction of known voxels
    in the cube is above ``minimum_known_voxels_ratio``.
``DISTANCE_WEIGHT_INVERSE``
    the same with weights ``1 / distance`` (centre weight 0).
``NEAREST_NEIGHBOR``
    mean of the known voxels in the smallest cube (radius 1 .. (size-1)/2) that has any; the ratio
    test uses ``size**3``.
``STICK``
    along 13 directions, the nearest known voxel forward and backward within ``stick_length_limit``
    voxels in total; a stick's value interpolates its two ends, its score is 1 / length; the best
    ``number_of_sticks_to_use`` sticks (all ties of a score together) are averaged by score.

Values are truncated to the output integer type as PLUS's casts do. A voxel no kernel can fill
stays 0.

:class:`GapFill` is freehand3d's own: each hole takes the value of the nearest filled voxel
(Euclidean distance in mm, exact distance transform) when that voxel is within ``max_distance`` mm.

Two implementations give the same volume: compiled CPU kernels
(:mod:`freehand3d.compound._hole_kernels`, numba) that visit only the holes, the default on the
CPU, and whole-volume torch convolutions on any ``device`` (the gap fill there is scipy's distance
transform). ``backend=`` picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from freehand3d.errors import ConfigError, InputError
from freehand3d.io.plus_volrec import HoleFillingElement

#: PLUS's 13 stick directions (x, y, z)
STICK_DIRECTIONS = (
    (1, 0, 0), (0, 1, 0), (0, 0, 1),
    (1, 1, 0), (1, 0, 1), (0, 1, 1),
    (1, -1, 0), (1, 0, -1), (0, 1, -1),
    (1, 1, 1),
    (-1, 1, 1), (1, -1, 1), (-1, -1, 1),
)  # fmt: skip


@dataclass
class GapFill:
    """Fill each hole with the value of the nearest filled voxel within ``max_distance`` mm."""

    max_distance: float


def parse_fill_spec(spec: str) -> list:
    """Hole-filling kernels from a short text (CLI ``--fill-holes``); kernels are tried in order.

    ``stick:LENGTH[:NSTICKS]``, ``gaussian:SIZE:STDEV[:RATIO]``,
    ``gaussian_accumulation:SIZE:STDEV[:RATIO]``, ``nn:SIZE[:RATIO]``, ``idw:SIZE[:RATIO]``,
    ``gap:MM``; several separated by ``,``.

    Examples
    --------
    >>> parse_fill_spec("gaussian:3:1,stick:9")[1].type
    'STICK'
    """
    kernels = []
    for part in (p.strip() for p in str(spec).split(",") if p.strip()):
        name, *args = part.split(":")
        name = name.lower()
        try:
            nums = [float(a) for a in args]
        except ValueError:
            raise ConfigError(f"--fill-holes {part!r}: parameters must be numbers", "fill-holes") from None
        if not all(math.isfinite(v) and v >= 0 for v in nums):
            raise ConfigError(f"--fill-holes {part!r}: parameters must be finite and not negative", "fill-holes")
        if name in ("gaussian", "gaussian_accumulation") and len(nums) > 1 and nums[1] <= 0:
            raise ConfigError(f"--fill-holes {part!r}: the Gaussian's STDEV must be > 0", "fill-holes")
        ratio_at = {"gaussian": 2, "gaussian_accumulation": 2}.get(name, 1)
        if name != "stick" and name != "gap" and len(nums) > ratio_at and nums[ratio_at] > 1:
            raise ConfigError(f"--fill-holes {part!r}: RATIO is a fraction of the kernel's voxels, 0..1", "fill-holes")
        if name == "gap" and len(nums) == 1:
            kernels.append(GapFill(nums[0]))
        elif name == "stick" and len(nums) in (1, 2):
            kernels.append(HoleFillingElement("STICK", stick_length_limit=int(nums[0]), number_of_sticks_to_use=int(nums[1]) if len(nums) > 1 else 1))
        elif name in ("gaussian", "gaussian_accumulation") and len(nums) in (2, 3):
            kernels.append(HoleFillingElement(name.upper(), size=int(nums[0]), stdev=nums[1], minimum_known_voxels_ratio=nums[2] if len(nums) > 2 else 0.0))
        elif name in ("nn", "nearest", "nearest_neighbor") and len(nums) in (1, 2):
            kernels.append(HoleFillingElement("NEAREST_NEIGHBOR", size=int(nums[0]), minimum_known_voxels_ratio=nums[1] if len(nums) > 1 else 0.0))
        elif name in ("idw", "distance_weight_inverse") and len(nums) in (1, 2):
            kernels.append(HoleFillingElement("DISTANCE_WEIGHT_INVERSE", size=int(nums[0]), minimum_known_voxels_ratio=nums[1] if len(nums) > 1 else 0.0))
        else:
            raise ConfigError(
                f"--fill-holes {part!r} not understood; use stick:LEN[:N], gaussian:SIZE:STDEV[:RATIO], "
                "nn:SIZE[:RATIO], idw:SIZE[:RATIO] or gap:MM",
                "fill-holes",
            )
    return kernels


# ---------------------------------------------------------------------- convolution helpers
def _conv(volume: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Zero-padded 'same' 3D correlation of a (Z, Y, X) float64 volume (borders count as unknown)."""
    pad = kernel.shape[0] // 2
    out = F.conv3d(volume[None, None], kernel[None, None].to(volume.dtype), padding=pad)
    return out[0, 0]


def _separable(volume: torch.Tensor, kernel_1d) -> torch.Tensor:
    """Zero-padded 'same' correlation with the outer product of a symmetric 1D kernel along all
    three axes, as shifted multiply-adds (cheaper than conv3d for small kernels, exact order)."""
    radius = len(kernel_1d) // 2
    out = volume
    for axis in range(3):
        n = out.shape[axis]
        acc = out * float(kernel_1d[radius])
        for k in range(1, radius + 1):
            if k >= n:
                break
            weight = float(kernel_1d[radius + k])
            # out[i] += w * (v[i + k] + v[i - k]) (symmetric kernel)
            acc.narrow(axis, 0, n - k).add_(out.narrow(axis, k, n - k), alpha=weight)
            acc.narrow(axis, k, n - k).add_(out.narrow(axis, 0, n - k), alpha=weight)
        out = acc
    return out


def _box(volume: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a (2r+1)^3 cube, zero outside."""
    return _separable(volume, [1.0] * (2 * radius + 1))


def _inverse_distance_kernel(size: int) -> torch.Tensor:
    half = (size - 1) / 2.0
    grid = np.arange(size, dtype=np.float32) - np.float32(half)
    zz, yy, xx = np.meshgrid(grid, grid, grid, indexing="ij")
    distance = np.sqrt(xx * xx + yy * yy + zz * zz, dtype=np.float32)
    with np.errstate(divide="ignore"):
        kernel = np.where(distance > 0, np.float32(1.0) / np.where(distance > 0, distance, 1), np.float32(0))
    return torch.as_tensor(kernel.astype(np.float32).astype(np.float64))


def _odd_size(element: HoleFillingElement) -> int:
    size = int(element.size)
    if size % 2 == 0:
        raise ConfigError(f"hole filling {element.type} Size must be odd, got {size}", "fill-holes")
    return size


def _gaussian_1d(element: HoleFillingElement) -> np.ndarray:
    """PLUS's 3D Gaussian is exp(-(x^2+y^2+z^2)/(2 s^2)) up to a constant that cancels in the
    weighted mean: the outer product of this 1D kernel along the three axes."""
    size = _odd_size(element)
    offsets = np.arange(size) - (size - 1) / 2.0
    return np.exp(-(offsets**2) / (2.0 * float(element.stdev) ** 2))


def _weighted_kernel(values, known, acc, element: HoleFillingElement):
    size = _odd_size(element)
    weight_field = known if element.type != "GAUSSIAN_ACCUMULATION" else known * acc
    if element.type == "DISTANCE_WEIGHT_INVERSE":
        kernel = _inverse_distance_kernel(size).to(values.device)
        sum_weights = _conv(weight_field, kernel)
        sum_values = _conv(weight_field * values, kernel)
    else:
        kernel_1d = _gaussian_1d(element)
        sum_weights = _separable(weight_field, kernel_1d)
        sum_values = _separable(weight_field * values, kernel_1d)
    n_known = _box(known, size // 2)
    ok = (sum_weights != 0) & (n_known / float(size**3) > element.minimum_known_voxels_ratio)
    estimate = torch.trunc(sum_values / torch.where(sum_weights != 0, sum_weights, torch.ones_like(sum_weights)))
    return estimate, ok


def _nearest_kernel(values, known, element: HoleFillingElement):
    max_radius = (int(element.size) - 1) // 2
    estimate = torch.zeros_like(values)
    ok = torch.zeros_like(values, dtype=torch.bool)
    decided = torch.zeros_like(ok)
    for radius in range(1, max_radius + 1):
        count = _box(known, radius)
        total = _box(known * values, radius)
        first = (count > 0) & ~decided
        estimate = torch.where(first, torch.trunc(total / count.clamp_min(1)), estimate)
        ok |= first & (count / float(element.size**3) > element.minimum_known_voxels_ratio)
        decided |= first
    return estimate, ok


def _shift(volume: torch.Tensor, step, fill) -> torch.Tensor:
    """``out[z, y, x] = volume[z + sz, y + sy, x + sx]`` with ``fill`` outside."""
    out = torch.full_like(volume, fill)
    src, dst = [], []
    for axis, s in zip((2, 1, 0), step):  # step is (x, y, z)
        n = volume.shape[axis]
        if abs(s) >= n:
            return out
        if s >= 0:
            src.append(slice(s, n))
            dst.append(slice(0, n - s))
        else:
            src.append(slice(0, n + s))
            dst.append(slice(-s, n))
    # src/dst were appended in (x, y, z) order; volume is indexed (z, y, x)
    out[dst[2], dst[1], dst[0]] = volume[src[2], src[1], src[0]]
    return out


def _stick_kernel(values, known, element: HoleFillingElement, slab: int = 32):
    """STICK on z-slabs (with a halo of the stick length) to bound memory: 13 sticks per voxel."""
    limit = int(element.stick_length_limit)
    halo = max(limit - 1, 0)
    nz = values.shape[0]
    estimate = torch.zeros_like(values)
    ok = torch.zeros_like(values, dtype=torch.bool)
    small_values = values.to(torch.int16)
    small_known = known > 0
    for z0 in range(0, nz, slab):
        lo, hi = max(z0 - halo, 0), min(z0 + slab + halo, nz)
        est, good = _stick_block(small_values[lo:hi], small_known[lo:hi], limit, int(element.number_of_sticks_to_use))
        keep = slice(z0 - lo, z0 - lo + min(slab, nz - z0))
        estimate[z0 : z0 + slab] = est[keep].to(values.dtype)
        ok[z0 : z0 + slab] = good[keep]
    return estimate, ok


def _stick_block(values, known, limit: int, n_use: int):
    n_dirs = len(STICK_DIRECTIONS)
    # a stick's score is 1 / (length * |direction|): keep the length key (smaller = better)
    keys = torch.full((n_dirs,) + values.shape, math.inf, dtype=torch.float64, device=values.device)
    stick_values = torch.zeros((n_dirs,) + values.shape, dtype=torch.int16, device=values.device)

    def nearest(direction):
        # steps to the nearest known voxel along direction within limit-1 steps (0: none), its value
        dist = torch.zeros(values.shape, dtype=torch.int16, device=values.device)
        val = torch.zeros_like(values)
        for j in range(1, limit):
            step = tuple(c * j for c in direction)
            new = _shift(known, step, False) & (dist == 0)
            dist.masked_fill_(new, j)
            val = torch.where(new, _shift(values, step, 0), val)
        return dist, val

    for d, direction in enumerate(STICK_DIRECTIONS):
        fwd, fwd_val = nearest(direction)
        rvs, rvs_val = nearest(tuple(-c for c in direction))
        valid = (fwd > 0) & (rvs > 0) & (rvs + fwd + 1 <= limit)
        total = (fwd + rvs + 1).to(torch.float64)
        weight_fwd = (rvs + 1).to(torch.float64) / total
        weight_rvs = 1.0 - weight_fwd
        length = total * math.sqrt(float(sum(c * c for c in direction)))
        keys[d] = torch.where(valid, length, torch.full_like(length, math.inf))
        # the per-stick value is stored in the output type (truncation)
        stick_values[d] = torch.trunc(weight_rvs * rvs_val + weight_fwd * fwd_val).to(torch.int16)
    # PLUS compares the scores 1/length; equal lengths give bit-identical scores
    weights = torch.where(torch.isfinite(keys), 1.0 / keys, torch.zeros_like(keys))
    del keys
    used = torch.zeros(values.shape, dtype=torch.int64, device=values.device)
    sum_weighted = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
    sum_weights = torch.zeros_like(sum_weighted)
    for _ in range(max(n_use, 0)):
        best = weights.max(dim=0).values
        active = (used < n_use) & (best > 0)
        if not bool(active.any()):
            break
        chosen = (weights == best) & active & (weights > 0)
        picked = torch.where(chosen, weights, torch.zeros_like(weights))
        sum_weighted += (picked * stick_values).sum(0)
        sum_weights += picked.sum(0)
        used += chosen.sum(0)
        weights = torch.where(chosen, torch.zeros_like(weights), weights)
    ok = sum_weights != 0
    estimate = torch.trunc(sum_weighted / torch.where(ok, sum_weights, torch.ones_like(sum_weights)))
    return estimate, ok


def _gap_fill(values: np.ndarray, known: np.ndarray, max_distance: float, spacing) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage

    if not known.any():
        return np.zeros_like(values), np.zeros(values.shape, bool)
    # spacing is (x, y, z); arrays are (z, y, x)
    distance, (iz, iy, ix) = ndimage.distance_transform_edt(
        ~known, sampling=tuple(float(s) for s in spacing[::-1]), return_indices=True
    )
    ok = (~known) & (distance <= max_distance)
    return values[iz, iy, ix], ok


#: the compiled gap fill looks at most this many neighbours per hole; beyond, the exact distance
#: transform of the whole volume is cheaper
_GAP_MAX_OFFSETS = 4096


def _fill_compiled(values, known, out, remaining, kernel, spacing, accumulation):
    """One kernel with the compiled CPU kernels, in place on ``out`` / ``remaining``."""
    from freehand3d.compound import _hole_kernels as compiled

    if isinstance(kernel, GapFill):
        offsets = compiled.gap_offsets(float(kernel.max_distance), spacing, _GAP_MAX_OFFSETS)
        if offsets is None:
            estimate, ok = _gap_fill(values, known, kernel.max_distance, spacing)
            use = remaining & ok
            out[use] = estimate[use]
            remaining &= ~use
        else:
            compiled.fill_from_offsets(values, known, out, remaining, offsets)
        return
    ratio = float(kernel.minimum_known_voxels_ratio)
    if kernel.type == "STICK":
        directions = np.array(STICK_DIRECTIONS, np.int64)
        compiled.fill_stick(values, known, out, remaining, directions, int(kernel.stick_length_limit), int(kernel.number_of_sticks_to_use))
    elif kernel.type == "NEAREST_NEIGHBOR":
        size = int(kernel.size)
        compiled.fill_nearest(values, known, out, remaining, (size - 1) // 2, float(size**3), ratio)
    elif kernel.type == "DISTANCE_WEIGHT_INVERSE":
        size = _odd_size(kernel)
        compiled.fill_inverse_distance(values, known, out, remaining, _inverse_distance_kernel(size).numpy(), float(size**3), ratio)
    else:
        size = _odd_size(kernel)
        acc = accumulation if kernel.type == "GAUSSIAN_ACCUMULATION" else None
        compiled.fill_gaussian(values, known, acc, out, remaining, _gaussian_1d(kernel), float(size**3), ratio)


def fill_holes(values, filled, kernels, spacing=(1.0, 1.0, 1.0), accumulation=None, device="cpu", backend=None) -> np.ndarray:
    """Fill the voxels that received no data.

    Parameters
    ----------
    values : (Z, Y, X) array or tensor, the reconstruction (uint8; other types with the torch backend).
    filled : (Z, Y, X) bool, voxels that received data (PLUS: accumulation != 0).
    kernels : list of :class:`HoleFillingElement` / :class:`GapFill`, or a spec string for
        :func:`parse_fill_spec`. Tried in order; the first that succeeds fills a voxel.
    spacing : (sx, sy, sz) mm (gap fill distances).
    accumulation : (Z, Y, X) accumulation values (GAUSSIAN_ACCUMULATION only; default: ``filled``).
    device : torch device for the torch kernels.
    backend : ``"numba"`` (compiled kernels that visit only the holes; CPU, uint8 values),
        ``"torch"`` (whole-volume convolutions on ``device``; the gap fill uses scipy's distance
        transform) or None: numba when ``device`` is the CPU and ``values`` are uint8, else torch.
        Both give the same volume (DISTANCE_WEIGHT_INVERSE: within one grey level, as conv3d sums
        in its own order).
    Returns
    -------
    (Z, Y, X) numpy array of the values' type.

    Examples
    --------
    >>> v = np.zeros((1, 1, 5), np.uint8); v[0, 0, [0, 4]] = [10, 50]
    >>> fill_holes(v, v > 0, "stick:5")[0, 0].tolist()  # PLUS weights the ends by (n+1)/(length+1)
    [10, 26, 34, 42, 50]
    """
    if isinstance(kernels, str):
        kernels = parse_fill_spec(kernels)
    values_np = np.ascontiguousarray(values.cpu().numpy() if isinstance(values, torch.Tensor) else values)
    known_np = np.ascontiguousarray(filled.cpu().numpy() if isinstance(filled, torch.Tensor) else filled, dtype=bool)
    if values_np.ndim != 3 or known_np.shape != values_np.shape:
        raise InputError(f"hole filling needs (Z, Y, X) values and a filled mask of the same shape, got {values_np.shape} and {known_np.shape}", "fill-holes")
    if accumulation is not None and np.shape(accumulation) != values_np.shape:
        raise InputError(f"hole filling accumulation has shape {np.shape(accumulation)}, the volume {values_np.shape}", "fill-holes")
    if any(isinstance(k, GapFill) for k in kernels) and not (len(spacing) == 3 and all(float(s) > 0 for s in spacing)):
        raise InputError(f"gap fill needs three positive spacings (mm), got {tuple(spacing)}", "fill-holes")
    dev = torch.device(device)
    if backend is None:
        backend = "numba" if dev.type == "cpu" and values_np.dtype == np.uint8 else "torch"
    if backend not in ("numba", "torch"):
        raise ConfigError(f"hole filling backend must be 'numba' or 'torch', got {backend!r}", "backend")
    if backend == "numba" and (dev.type != "cpu" or values_np.dtype != np.uint8):
        raise ConfigError(f"the numba hole filling runs on the CPU on uint8 volumes; use backend='torch' ({dev}, {values_np.dtype})", "backend")
    out = values_np.copy()
    remaining = ~known_np
    if not remaining.any() or not kernels:
        return out
    if backend == "numba":
        acc_np = known_np if accumulation is None else np.asarray(accumulation)
        for kernel in kernels:
            _fill_compiled(values_np, known_np, out, remaining, kernel, spacing, acc_np)
            if not remaining.any():
                break
    else:
        _fill_torch(values_np, known_np, out, remaining, kernels, spacing, accumulation, dev)
    # PLUS writes 0 where every kernel failed (holes are 0 already)
    out[remaining] = 0
    return out


def _as_volume_type(estimate: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """Hole estimates (float64) in the volume's type: integer types clip to their range and
    truncate, as PLUS's uint8 cast does; float types keep the value."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return estimate.clamp(0, 255).to(torch.uint8).cpu().numpy()
    if dtype.kind == "f":
        return estimate.cpu().numpy().astype(dtype)
    info = np.iinfo(dtype)
    return estimate.clamp(float(info.min), float(info.max)).trunc().cpu().numpy().astype(dtype)


def _fill_torch(values_np, known_np, out, remaining, kernels, spacing, accumulation, dev):
    vals = torch.as_tensor(values_np, device=dev, dtype=torch.float64)
    known = torch.as_tensor(known_np, device=dev, dtype=torch.float64)
    if accumulation is None:
        acc = known
    else:
        acc = torch.as_tensor(np.asarray(accumulation, np.float64), device=dev)
    for kernel in kernels:
        if isinstance(kernel, GapFill):
            estimate_np, ok_np = _gap_fill(values_np, known_np, kernel.max_distance, spacing)
        else:
            if kernel.type == "STICK":
                estimate, ok = _stick_kernel(vals, known, kernel)
            elif kernel.type == "NEAREST_NEIGHBOR":
                estimate, ok = _nearest_kernel(vals, known, kernel)
            else:
                estimate, ok = _weighted_kernel(vals, known, acc, kernel)
            estimate_np = _as_volume_type(estimate, values_np.dtype)
            ok_np = ok.cpu().numpy()
        use = remaining & ok_np
        out[use] = estimate_np[use]
        remaining &= ~use
        if not remaining.any():
            break


__all__ = ["fill_holes", "parse_fill_spec", "GapFill", "STICK_DIRECTIONS"]
