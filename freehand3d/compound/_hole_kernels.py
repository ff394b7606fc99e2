"""Compiled CPU kernels (numba) for :mod:`freehand3d.compound.holes`.

Every kernel fills, z-slice by z-slice in parallel, the voxels still marked in ``remaining`` where
it succeeds (writing ``out`` and clearing ``remaining``), reading only the *unfilled* volume
(``values``, ``known``): a voxel's result does not depend on the order or the thread count.
STICK, DISTANCE_WEIGHT_INVERSE and the gap fill look around each hole; GAUSSIAN and
NEAREST_NEIGHBOR sum along z and y over a slice and make the last (x) pass at the holes only. The
torch path instead convolves the whole volume, once per kernel parameter.

The arithmetic repeats the torch path's operation by operation, so the results are the same
voxel for voxel: the separable sums run axis by axis (z, then y, then x) in the torch path's order
with its fused multiply-adds (``Tensor.add_(other, alpha=w)`` on CPU), the stick values and scores
use the same float expressions, and the gap fill reproduces
``scipy.ndimage.distance_transform_edt``'s choice among equally near voxels (smallest x, then y,
then z) and its distance formula. The inverse-distance kernel is the one exception: torch's conv3d
adds the cube in an order of its own, so truncation can differ by one grey level.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _fma(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's fma), as torch's vectorised ``add_(alpha=)`` computes it."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return sig, codegen


NEAREST_NEIGHBOR, GAUSSIAN, DISTANCE_WEIGHT_INVERSE, STICK, GAP = range(5)


@njit(cache=True, nogil=True, parallel=True)
def _fill(kind, values, known, accumulation, out, remaining, line, cube, steps, int_a, int_b, cube_voxels, min_ratio):
    """Fill the holes still in ``remaining`` where kernel ``kind`` succeeds, z-slices in parallel;
    the parameters each kind reads are listed in the public wrappers below."""
    nz, ny, nx = values.shape
    norms = np.empty(steps.shape[0])
    for d in range(steps.shape[0]):
        norms[d] = math.sqrt(float(steps[d, 0] ** 2 + steps[d, 1] ** 2 + steps[d, 2] ** 2))
    for z in prange(nz):
        if kind == NEAREST_NEIGHBOR or kind == GAUSSIAN:
            _fill_slice_separable(kind, values, known, accumulation, out, remaining, z, line, int_a, cube_voxels, min_ratio)
            continue
        scratch = np.empty((2, steps.shape[0]))
        for y in range(ny):
            for x in range(nx):
                if not remaining[z, y, x]:
                    continue
                if kind == DISTANCE_WEIGHT_INVERSE:
                    ok, estimate = _inverse_distance(values, known, z, y, x, cube, cube_voxels, min_ratio)
                elif kind == STICK:
                    ok, estimate = _stick(values, known, z, y, x, steps, norms, int_a, int_b, scratch)
                else:
                    ok, estimate = _first_at_offsets(values, known, z, y, x, steps)
                if ok:
                    _store(out, remaining, z, y, x, estimate)


@njit(inline="always")
def _store(out, remaining, z, y, x, estimate):
    # the torch path's clamp(0, 255) before uint8
    out[z, y, x] = min(max(estimate, 0.0), 255.0)
    remaining[z, y, x] = False


_NO_LINE = np.zeros(1)
_NO_CUBE = np.zeros((1, 1, 1))
_NO_STEPS = np.zeros((1, 3), np.int64)


def fill_nearest(values, known, out, remaining, max_radius: int, cube_voxels: float, min_ratio: float):
    """NEAREST_NEIGHBOR: mean of the known voxels in the smallest cube (radius 1 .. max_radius)
    holding any; the ratio test (count / cube_voxels > min_ratio) is made at that radius only."""
    _fill(NEAREST_NEIGHBOR, values, known, _NO_CUBE, out, remaining, _NO_LINE, _NO_CUBE, _NO_STEPS, max_radius, 0, cube_voxels, min_ratio)


def fill_gaussian(values, known, accumulation, out, remaining, kernel_1d, cube_voxels: float, min_ratio: float):
    """GAUSSIAN (``accumulation`` None) or GAUSSIAN_ACCUMULATION: weighted mean with the separable
    weights ``kernel_1d`` (outer product along z, y, x) of the known voxels (times their
    accumulation); succeeds when the weights do not sum to 0 and (known voxels in the cube) /
    cube_voxels > min_ratio."""
    use = accumulation is not None
    acc = np.ascontiguousarray(accumulation, np.float64) if use else _NO_CUBE
    _fill(GAUSSIAN, values, known, acc, out, remaining, np.asarray(kernel_1d, np.float64), _NO_CUBE, _NO_STEPS, int(use), 0, cube_voxels, min_ratio)


def fill_inverse_distance(values, known, out, remaining, kernel_3d, cube_voxels: float, min_ratio: float):
    """DISTANCE_WEIGHT_INVERSE: weighted mean of the known voxels in the cube with the (z, y, x)
    weights ``kernel_3d``."""
    _fill(DISTANCE_WEIGHT_INVERSE, values, known, _NO_CUBE, out, remaining, _NO_LINE, np.asarray(kernel_3d, np.float64), _NO_STEPS, 0, 0, cube_voxels, min_ratio)


def fill_stick(values, known, out, remaining, directions, limit: int, n_use: int):
    """STICK: per direction ((n, 3) x, y, z) the nearest known voxel forward and backward, at most
    ``limit`` voxels end to end; the value interpolates the ends and is truncated; the ``n_use``
    best sticks by score 1 / length (ties of a score together) are averaged by score."""
    _fill(STICK, values, known, _NO_CUBE, out, remaining, _NO_LINE, _NO_CUBE, np.asarray(directions, np.int64), limit, n_use, 0.0, 0.0)


def fill_from_offsets(values, known, out, remaining, offsets):
    """Gap fill: each hole takes the value of the first known voxel at ``offsets`` ((n, 3) z, y, x,
    nearest first, ties in the order wanted); see :func:`gap_offsets`."""
    _fill(GAP, values, known, _NO_CUBE, out, remaining, _NO_LINE, _NO_CUBE, offsets, 0, 0, 0.0, 0.0)


# ---------------------------------------------------------------------- separable kernels
@njit(inline="always")
def _field(values, known, accumulation, use_accumulation, z, y, x):
    """(weight, weight x value) of one voxel: the two fields the torch path convolves."""
    if not known[z, y, x]:
        return 0.0, 0.0
    w = accumulation[z, y, x] if use_accumulation else 1.0
    return w, w * values[z, y, x]


@njit
def _zy_sums(values, known, accumulation, use_accumulation, z, kernel_1d, tmp, sums):
    """Torch's zero-padded separable sums along z, then y, over all of slice z, of the weights
    (``sums[0]``) and weights x values (``sums[1]``): per voxel the centre product, then for
    k = 1.. the +k and -k neighbours by fused multiply-add. ``tmp``, ``sums``: (2, ny, nx)."""
    nz, ny, nx = values.shape
    radius = kernel_1d.shape[0] // 2
    centre = kernel_1d[radius]
    for y in range(ny):
        for x in range(nx):
            w, v = _field(values, known, accumulation, use_accumulation, z, y, x)
            tmp[0, y, x] = w * centre
            tmp[1, y, x] = v * centre
    for k in range(1, radius + 1):
        for zz in (z + k, z - k):
            if 0 <= zz < nz:
                for y in range(ny):
                    for x in range(nx):
                        w, v = _field(values, known, accumulation, use_accumulation, zz, y, x)
                        tmp[0, y, x] = _fma(w, kernel_1d[radius + k], tmp[0, y, x])
                        tmp[1, y, x] = _fma(v, kernel_1d[radius + k], tmp[1, y, x])
    for y in range(ny):
        for x in range(nx):
            sums[0, y, x] = tmp[0, y, x] * centre
            sums[1, y, x] = tmp[1, y, x] * centre
        for k in range(1, radius + 1):
            for yy in (y + k, y - k):
                if 0 <= yy < ny:
                    for x in range(nx):
                        sums[0, y, x] = _fma(tmp[0, yy, x], kernel_1d[radius + k], sums[0, y, x])
                        sums[1, y, x] = _fma(tmp[1, yy, x], kernel_1d[radius + k], sums[1, y, x])


@njit(inline="always")
def _x_sum(row, x, kernel_1d):
    """The last (x) pass of the separable sum, at x only."""
    radius = kernel_1d.shape[0] // 2
    total = row[x] * kernel_1d[radius]
    for k in range(1, radius + 1):
        if x + k < row.shape[0]:
            total = _fma(row[x + k], kernel_1d[radius + k], total)
        if x - k >= 0:
            total = _fma(row[x - k], kernel_1d[radius + k], total)
    return total


@njit
def _fill_slice_separable(kind, values, known, accumulation, out, remaining, z, kernel_1d, int_a, cube_voxels, min_ratio):
    """GAUSSIAN(_ACCUMULATION) (``int_a``: use the accumulation) and NEAREST_NEIGHBOR (``int_a``:
    largest radius) on slice z: separable sums over the slice, the last pass at the holes only."""
    ny, nx = values.shape[1:]
    if not remaining[z].any():
        return
    planes = np.empty((6, ny, nx))
    tmp, sums, counts = planes[0:2], planes[2:4], planes[4:6]
    if kind == GAUSSIAN:
        ones = np.ones(kernel_1d.shape[0])
        _zy_sums(values, known, accumulation, int_a == 1, z, kernel_1d, tmp, sums)
        _zy_sums(values, known, accumulation, False, z, ones, tmp, counts)
        for y in range(ny):
            for x in range(nx):
                if remaining[z, y, x]:
                    sum_w = _x_sum(sums[0, y], x, kernel_1d)
                    if sum_w != 0.0 and _x_sum(counts[0, y], x, ones) / cube_voxels > min_ratio:
                        _store(out, remaining, z, y, x, float(math.trunc(_x_sum(sums[1, y], x, kernel_1d) / sum_w)))
        return
    # NEAREST_NEIGHBOR: the smallest cube holding a known voxel decides (fills or fails)
    decided = np.zeros((ny, nx), np.bool_)
    for radius in range(1, int_a + 1):
        ones = np.ones(2 * radius + 1)
        _zy_sums(values, known, accumulation, False, z, ones, tmp, counts)
        for y in range(ny):
            for x in range(nx):
                if remaining[z, y, x] and not decided[y, x]:
                    count = _x_sum(counts[0, y], x, ones)
                    if count > 0:
                        decided[y, x] = True
                        if count / cube_voxels > min_ratio:
                            _store(out, remaining, z, y, x, float(math.trunc(_x_sum(counts[1, y], x, ones) / count)))


# ---------------------------------------------------------------------- per-hole kernels
@njit
def _inverse_distance(values, known, z, y, x, kernel_3d, cube_voxels, min_ratio):
    """Weighted mean of the known voxels of the cube about (z, y, x), (z, y, x) weights ``kernel_3d``."""
    nz, ny, nx = known.shape
    radius = kernel_3d.shape[0] // 2
    count = 0
    sum_w = 0.0
    sum_v = 0.0
    for zz in range(max(z - radius, 0), min(z + radius + 1, nz)):
        for yy in range(max(y - radius, 0), min(y + radius + 1, ny)):
            for xx in range(max(x - radius, 0), min(x + radius + 1, nx)):
                # branch-free: an unknown voxel adds exact zeros
                is_known = known[zz, yy, xx]
                w = kernel_3d[zz - z + radius, yy - y + radius, xx - x + radius] * is_known
                count += is_known
                sum_w += w
                sum_v += w * values[zz, yy, xx]
    if sum_w == 0.0 or not count / cube_voxels > min_ratio:
        return False, 0.0
    return True, float(math.trunc(sum_v / sum_w))


@njit(inline="always")
def _first_known(known, z, y, x, dz, dy, dx, max_steps):
    """Steps (1 .. max_steps) to the first known voxel along (dz, dy, dx); 0 when none inside."""
    nz, ny, nx = known.shape
    for j in range(1, max_steps + 1):
        zz, yy, xx = z + dz * j, y + dy * j, x + dx * j
        if zz < 0 or zz >= nz or yy < 0 or yy >= ny or xx < 0 or xx >= nx:
            return 0
        if known[zz, yy, xx]:
            return j
    return 0


@njit
def _stick(values, known, z, y, x, directions, norms, limit, n_use, scratch):
    scores, sticks = scratch[0], scratch[1]
    for d in range(directions.shape[0]):
        dx, dy, dz = directions[d, 0], directions[d, 1], directions[d, 2]
        scores[d] = 0.0
        fwd = _first_known(known, z, y, x, dz, dy, dx, limit - 1)
        if fwd == 0:
            continue
        rvs = _first_known(known, z, y, x, -dz, -dy, -dx, limit - 1 - fwd)
        if rvs == 0:
            continue
        total = float(fwd + rvs + 1)
        weight_fwd = float(rvs + 1) / total
        weight_rvs = 1.0 - weight_fwd
        fwd_value = float(values[z + dz * fwd, y + dy * fwd, x + dx * fwd])
        rvs_value = float(values[z - dz * rvs, y - dy * rvs, x - dx * rvs])
        sticks[d] = float(math.trunc(weight_rvs * rvs_value + weight_fwd * fwd_value))
        scores[d] = 1.0 / (total * norms[d])
    used = 0
    sum_weighted = 0.0
    sum_weights = 0.0
    for _ in range(n_use):
        best = 0.0
        for d in range(directions.shape[0]):
            best = max(best, scores[d])
        if best <= 0.0 or used >= n_use:
            break
        # one round takes every stick of the best score (the torch path sums a round, then adds it)
        round_weighted = 0.0
        round_weights = 0.0
        for d in range(directions.shape[0]):
            if scores[d] == best:
                round_weighted += best * sticks[d]
                round_weights += best
                used += 1
                scores[d] = 0.0
        sum_weighted += round_weighted
        sum_weights += round_weights
    if sum_weights == 0.0:
        return False, 0.0
    return True, float(math.trunc(sum_weighted / sum_weights))


@njit
def _first_at_offsets(values, known, z, y, x, offsets):
    nz, ny, nx = values.shape
    for i in range(offsets.shape[0]):
        zz, yy, xx = z + offsets[i, 0], y + offsets[i, 1], x + offsets[i, 2]
        if 0 <= zz < nz and 0 <= yy < ny and 0 <= xx < nx and known[zz, yy, xx]:
            return True, float(values[zz, yy, xx])
    return False, 0.0


def gap_offsets(max_distance: float, spacing, limit: int):
    """(n, 3) int64 (z, y, x) offsets within ``max_distance`` mm, nearest first, equally near ones
    by smallest x, then y, then z offset (scipy's EDT picks that voxel); None when more than
    ``limit`` would be needed. The distance is computed as scipy computes it from its indices."""
    sx, sy, sz = (float(s) for s in spacing)
    if not max_distance >= 0:
        return np.zeros((0, 3), np.int64)
    reach = [int(math.floor(max_distance / s)) for s in (sz, sy, sx)]
    if np.prod([2 * r + 1 for r in reach], dtype=np.float64) > 8 * limit:
        return None
    dz, dy, dx = np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij")
    dz, dy, dx = dz.ravel(), dy.ravel(), dx.ravel()
    squared = (dz.astype(np.float64) * sz) ** 2
    squared += (dy.astype(np.float64) * sy) ** 2
    squared += (dx.astype(np.float64) * sx) ** 2
    inside = (np.sqrt(squared) <= max_distance) & (squared > 0)
    if inside.sum() > limit:
        return None
    order = np.lexsort((dz[inside], dy[inside], dx[inside], squared[inside]))
    return np.stack([dz[inside], dy[inside], dx[inside]], 1)[order].astype(np.int64)
