"""Compiled CPU kernels (numba) for pasting frames into the voxel grid.

They compute exactly what the torch scatter path of :mod:`freehand3d.compound.insert` computes, for
the three arithmetics (PLUS's 14-bit fixed point, PLUS's double precision, freehand3d's float32 fast
path), both methods and every compounding mode, but pixel by pixel in PLUS's order (frame, row,
column, and for trilinear splatting the corners 7 down to 0). Sequential order makes PLUS's running
averages trivial (no level-by-level replay) and LATEST needs no order scratch.

Positions are affine along a row: in fixed point the raw voxel coordinate of a pixel is the row's
origin plus ``x`` times the quantised x axis, integers that give exactly PLUS's
``origin + x * x_axis + y * y_axis``. The float paths keep the row term ``origin + y * y_axis`` and
add ``x * x_axis`` per pixel, the same two roundings as the torch path.

Nearest neighbour runs in two phases per block of frames: the voxel index of every pixel is
recorded (branch-free, vectorised loops; threads split the rows), then the recorded pixels are
pasted in order (threads split the voxels into blocks of 4096 and each walks all recorded pixels,
pasting only into its own blocks). Trilinear splatting lets every thread walk all pixels and update
only the voxels with ``(y + z) & (owners - 1) == t``. Either way every voxel sees its contributions
in the serial order, and the result is bit for bit the same for any number of threads.
"""

from __future__ import annotations

import concurrent.futures
import functools

import numba
import numpy as np
from numba import njit, types
from numba.extending import overload

from freehand3d.compound import insert

#: arithmetics
FIXED, DOUBLE, SINGLE = 0, 1, 2
#: compounding modes
LATEST, MAXIMUM, MEAN, IMPORTANCE = 0, 1, 2, 3
MODE_CODES = {"latest": LATEST, "max": MAXIMUM, "mean": MEAN, "importance": IMPORTANCE}

_FIXED_BITS = insert.FIXED_BITS
_FIXED_ONE = insert.FIXED_ONE
_FIXED_HALF = insert.FIXED_HALF
_ACC_UNIT, _ACC_MAX, _ACC_THRESHOLD = insert.ACC_UNIT, insert.ACC_MAX, insert.ACC_THRESHOLD
_FLOOR_TOL = insert.FLOOR_TOL
_HALF_TOL = 0.5 + _FLOOR_TOL
#: two-phase nearest neighbour: threads own blocks of 2**12 consecutive voxels, in turn
_OWNER_SHIFT = 12


# ---------------------------------------------------------------------- pixel types
# Frames of any pixel type go through the same loops: numba compiles one specialisation per frame
# type, and these helpers pick the arithmetic at compile time from the types, so the uint8 path
# compiles to exactly the code it had before (int64 pixels, int32 LATEST/MAXIMUM values, float32
# sums) and the other types get float accumulation (float32 buffers for types that float32 holds
# exactly, float64 for int32 / uint32 / float64).
def _as_pixel(x):  # pragma: no cover - replaced by the overload inside compiled code
    return x


@overload(_as_pixel)
def _as_pixel_impl(x):
    if isinstance(x, types.Float):
        return lambda x: np.float64(x)
    return lambda x: np.int64(x)


def _exact_pixel(v):  # pragma: no cover
    return v


@overload(_exact_pixel)
def _exact_pixel_impl(v):
    """PLUS's exact rules take integer pixels (uint8 frames only); float pixels never reach them,
    this only keeps their typing valid when the loops are compiled for float frames."""
    if isinstance(v, types.Float):
        return lambda v: np.int64(v)
    return lambda v: v


def _weighted_add(out, w, v):  # pragma: no cover
    return out + w * v


@overload(_weighted_add)
def _weighted_add_impl(out, w, v):
    """``out + w * v`` for MEAN sums: float32 (the uint8 path's arithmetic) into a float32 buffer,
    float64 into a float64 one."""
    if isinstance(out, types.Float) and out.bitwidth == 64:
        return lambda out, w, v: out + np.float64(w) * np.float64(v)
    return lambda out, w, v: out + w * np.float32(v)


def _maximum(out, a, v):  # pragma: no cover
    return max(out, v)


@overload(_maximum)
def _maximum_impl(out, a, v):
    """MAXIMUM of a voxel and a pixel. uint8 frames (integer buffer): ``max(out, v)`` against the
    empty value 0, as PLUS. Other types (float buffer): an empty voxel (accumulation 0) takes the
    pixel, so negative values (int16 RF, float data) compound correctly."""
    if isinstance(out, types.Float):
        return lambda out, a, v: v if a == 0 else max(np.float64(out), np.float64(v))
    return lambda out, a, v: max(np.int64(out), v)


def _max_filled(out, a, v):  # pragma: no cover
    return 1.0


@overload(_max_filled)
def _max_filled_impl(out, a, v):
    """Accumulation after a trilinear MAXIMUM write: uint8 path as PLUS (a voxel counts as filled
    once a pixel > 0 raised it), float buffers: filled by any eligible pixel."""
    if isinstance(out, types.Float):
        return lambda out, a, v: np.float32(1.0)
    return lambda out, a, v: np.float32(1.0) if v > 0 else a


# ---------------------------------------------------------------------- per-contribution updates
@njit(cache=True)
def _round_fixed(raw):
    return (raw + _FIXED_HALF) >> _FIXED_BITS


@njit(cache=True)
def _plus_round(x):
    return np.int64(np.floor(x + _HALF_TOL))


@njit(cache=True)
def _div_round_half_even(numerator, denominator):
    """round(numerator / denominator), ties to even, for non-negative int64 numerators below 2**53
    and positive denominators: a double quotient corrected to the exact integer floor (cheaper than
    a 64-bit integer division)."""
    quotient = np.int64(np.float64(numerator) / np.float64(denominator))
    rest = numerator - quotient * denominator
    if rest < 0:
        quotient -= 1
        rest += denominator
    elif rest >= denominator:
        quotient += 1
        rest -= denominator
    twice_rest = rest * 2
    if twice_rest > denominator or (twice_rest == denominator and (quotient & 1) == 1):
        quotient += 1
    return quotient


# The rules take and return scalars (voxel value and accumulation before -> after, and 1 when PLUS's
# accumulation crosses its overflow threshold): the loops do the loads and stores themselves, so no
# array reference counting is left inside the pixel loops.
@njit(cache=True)
def _nearest_rule(exact, mode, out, a, v, imp):
    """One pixel of value ``v`` into a voxel holding ``out`` with accumulation ``a``."""
    if mode == LATEST:
        return v, (_ACC_UNIT if exact else 1), 0
    if mode == MAXIMUM:
        return _maximum(out, a, v), (_ACC_UNIT if exact else 1), 0
    if not exact:
        w32 = np.float32(1.0) if mode == MEAN else np.float32(imp)
        return _weighted_add(out, w32, v), a + w32, 0
    w = _ACC_UNIT if mode == MEAN else imp
    v = _exact_pixel(v)
    out = np.int64(out)
    a = np.int64(a)
    if a <= _ACC_THRESHOLD:
        new_acc = a + w
        return (v * w + out * a) // new_acc, min(new_acc, _ACC_MAX), (1 if new_acc > _ACC_THRESHOLD else 0)
    # PLUS's recursive filter once the uint16 accumulation is (nearly) saturated
    return np.int64(v * (1.0 / 256.0) + out * (255.0 / 256.0)), a, 0


@njit(cache=True)
def _rule_single(mode, out, a, v, w, imp):
    """freehand3d's fast trilinear rules: float32 weight ``w``, exact float sums for MEAN."""
    if mode == LATEST:
        if w >= np.float32(0.125):
            return v, w, 0
        return out, a, 0
    if mode == MAXIMUM:
        if w >= np.float32(0.125):
            return _maximum(out, a, v), _max_filled(out, a, v), 0
        return out, a, 0
    ww = w if mode == MEAN else w * np.float32(imp)
    return _weighted_add(out, ww, v), a + ww, 0


@njit(cache=True)
def _rule_fixed(mode, out, a, v, w, imp):
    """PLUS's trilinear rules in 14-bit fixed point (raw int64 weight ``w``)."""
    v = _exact_pixel(v)
    out = np.int64(out)
    a_old = np.int64(a)
    if mode == LATEST or mode == MAXIMUM:
        if w >= _FIXED_ONE // 8 and (mode == LATEST or v > out):
            return v, _round_fixed(w * _ACC_UNIT), 0
        return out, a_old, 0
    if mode == MEAN:
        r = a_old * (_FIXED_ONE // _ACC_UNIT)  # fixed(acc / 256): exact
        total = w + r
        numerator = w * v + r * out
        new_a = total * _ACC_UNIT
    else:
        total = imp * w + (a_old << _FIXED_BITS)
        numerator = v * imp * w + ((out * a_old) << _FIXED_BITS)
        new_a = total
    # fixed / fixed: PLUS's double quotient converted back to fixed (ties to even), then rounded
    new_out = _round_fixed(_div_round_half_even(numerator << _FIXED_BITS, total))
    new_acc = _round_fixed(new_a) if new_a < (_ACC_MAX << _FIXED_BITS) else _ACC_MAX
    return new_out, new_acc, (1 if (new_a > (_ACC_THRESHOLD << _FIXED_BITS) and a_old <= _ACC_THRESHOLD) else 0)


@njit(cache=True)
def _rule_double(mode, out, a, v, w, imp):
    """PLUS's trilinear rules in double precision (Optimization PARTIAL / NONE)."""
    v = _exact_pixel(v)
    out = np.int64(out)
    a_old = np.int64(a)
    if mode == LATEST or mode == MAXIMUM:
        if w >= 0.125 and (mode == LATEST or v > out):
            return v, _plus_round(w * _ACC_UNIT), 0
        return out, a_old, 0
    x = np.float64(v)
    if mode == MEAN:
        r = a_old / _ACC_UNIT
        total = w + r
        new_out = _plus_round((w * x + r * out) / total)
        new_a = total * _ACC_UNIT
    else:
        impf = np.float64(imp)
        new_a = impf * w + a_old
        new_out = _plus_round((x * impf * w + out * a_old) / new_a)
    return new_out, (_plus_round(new_a) if new_a < _ACC_MAX else _ACC_MAX), 0


# ---------------------------------------------------------------------- frame loops
@njit(cache=True)
def _fixed_row(q, b, x0, y):
    """Raw fixed-point voxel position of pixel (x0, y) of frame b, and the step to the next column."""
    dx, dy, dz = q[b, 0, 0], q[b, 1, 0], q[b, 2, 0]
    return q[b, 0, 3] + x0 * dx + y * q[b, 0, 1], q[b, 1, 3] + x0 * dy + y * q[b, 1, 1], q[b, 2, 3] + x0 * dz + y * q[b, 2, 1], dx, dy, dz


@njit(cache=True)
def _float_row(m, b, y):
    """Row term ``origin + y * y_axis`` of frame b in the precision of ``m`` and ``y``."""
    return m[b, 0, 3] + y * m[b, 0, 1], m[b, 1, 3] + y * m[b, 1, 1], m[b, 2, 3] + y * m[b, 2, 1]


@njit(cache=True)
def _owned(j, k, owner_mask, owner):
    return ((j + k) & owner_mask) == owner


@njit(cache=True)
def _corner(c, i0, j0, k0, i1, j1, k1, nx, nxy, owner_mask, owner):
    """Flat index of corner ``c`` (PLUS's order: x slowest, z fastest), -1 when another thread owns it."""
    j = j1 if (c >> 1) & 1 else j0
    k = k1 if c & 1 else k0
    if owner_mask and not _owned(j, k, owner_mask, owner):
        return -1
    return k * nxy + j * nx + (i1 if c >> 2 else i0)


@njit(cache=True, nogil=True)
def _splat_owner(owner, owner_mask, frames, q, m64, m32, arith, mode, runs, importance, min_value, nx, ny, nz, value, acc):
    """Trilinear splatting of every pixel of every frame in PLUS's order (corners 7..0); updates only
    the voxels of ``owner``. ``arith`` and ``mode`` are compile-time constants (see :func:`_kernel`)."""
    overflow = 0
    nxy = nx * ny
    one32 = np.float32(1.0)
    lim_x, lim_y, lim_z = np.float32(nx - 1), np.float32(ny - 1), np.float32(nz - 1)
    # the 8 corner weights of the current pixel, in the arithmetic's type
    w_fixed = np.zeros(8, np.int64)
    w_double = np.zeros(8, np.float64)
    w_single = np.zeros(8, np.float32)
    for b in range(frames.shape[0]):
        for r in range(runs.shape[0]):
            y, x0, x1 = runs[r, 0], runs[r, 1], runs[r, 2]
            frow = frames[b, y]
            irow = importance[y] if mode == IMPORTANCE else importance[0]
            if arith == FIXED:
                # integer adds along the row give exactly PLUS's origin + x * x_axis + y * y_axis
                px, py, pz, dx, dy, dz = _fixed_row(q, b, x0, y)
            elif arith == DOUBLE:
                tx, ty, tz = _float_row(m64, b, np.float64(y))
            else:
                tx32, ty32, tz32 = _float_row(m32, b, np.float32(y))
            for x in range(x0, x1 + 1):
                if arith == FIXED:
                    rawx, rawy, rawz = px, py, pz
                    px, py, pz = px + dx, py + dy, pz + dz
                v = _as_pixel(frow[x])
                if v < min_value:
                    continue
                imp = np.int64(irow[x]) if mode == IMPORTANCE else np.int64(0)
                if mode == IMPORTANCE and imp == 0:  # nothing to add (fast path) or skipped (PLUS)
                    continue
                if arith == FIXED:
                    i0, j0, k0 = rawx >> _FIXED_BITS, rawy >> _FIXED_BITS, rawz >> _FIXED_BITS
                    fx, fy, fz = rawx - (i0 << _FIXED_BITS), rawy - (j0 << _FIXED_BITS), rawz - (k0 << _FIXED_BITS)
                    i1, j1, k1 = i0 + (fx != 0), j0 + (fy != 0), k0 + (fz != 0)
                    if i0 < 0 or j0 < 0 or k0 < 0 or i1 >= nx or j1 >= ny or k1 >= nz:
                        continue
                    rx, ry, rz = _FIXED_ONE - fx, _FIXED_ONE - fy, _FIXED_ONE - fz
                    ryrz, ryfz = _round_fixed(ry * rz), _round_fixed(ry * fz)
                    fyrz, fyfz = _round_fixed(fy * rz), _round_fixed(fy * fz)
                    w_fixed[0], w_fixed[1] = _round_fixed(rx * ryrz), _round_fixed(rx * ryfz)
                    w_fixed[2], w_fixed[3] = _round_fixed(rx * fyrz), _round_fixed(rx * fyfz)
                    w_fixed[4], w_fixed[5] = _round_fixed(fx * ryrz), _round_fixed(fx * ryfz)
                    w_fixed[6], w_fixed[7] = _round_fixed(fx * fyrz), _round_fixed(fx * fyfz)
                elif arith == DOUBLE:
                    posx, posy, posz = tx + x * m64[b, 0, 0], ty + x * m64[b, 1, 0], tz + x * m64[b, 2, 0]
                    lx, ly, lz = np.floor(posx + _FLOOR_TOL), np.floor(posy + _FLOOR_TOL), np.floor(posz + _FLOOR_TOL)
                    if not (lx >= 0 and ly >= 0 and lz >= 0 and lx < nx and ly < ny and lz < nz):
                        continue
                    fxd, fyd, fzd = posx - lx, posy - ly, posz - lz
                    i0, j0, k0 = np.int64(lx), np.int64(ly), np.int64(lz)
                    i1, j1, k1 = i0 + (fxd != 0), j0 + (fyd != 0), k0 + (fzd != 0)
                    if i1 >= nx or j1 >= ny or k1 >= nz:
                        continue
                    rxd, ryd, rzd = 1.0 - fxd, 1.0 - fyd, 1.0 - fzd
                    ryrzd, ryfzd, fyrzd, fyfzd = ryd * rzd, ryd * fzd, fyd * rzd, fyd * fzd
                    w_double[0], w_double[1], w_double[2], w_double[3] = rxd * ryrzd, rxd * ryfzd, rxd * fyrzd, rxd * fyfzd
                    w_double[4], w_double[5], w_double[6], w_double[7] = fxd * ryrzd, fxd * ryfzd, fxd * fyrzd, fxd * fyfzd
                else:
                    xf = np.float32(x)
                    posx32, posy32, posz32 = tx32 + xf * m32[b, 0, 0], ty32 + xf * m32[b, 1, 0], tz32 + xf * m32[b, 2, 0]
                    lx32, ly32, lz32 = np.floor(posx32), np.floor(posy32), np.floor(posz32)
                    # the fast path always splats onto low and low + 1
                    if not (lx32 >= 0 and ly32 >= 0 and lz32 >= 0 and lx32 < lim_x and ly32 < lim_y and lz32 < lim_z):
                        continue
                    fxs, fys, fzs = posx32 - lx32, posy32 - ly32, posz32 - lz32
                    rxs, rys, rzs = one32 - fxs, one32 - fys, one32 - fzs
                    # (wx * wy) * wz, as the torch fast path multiplies
                    w_single[0], w_single[1] = (rxs * rys) * rzs, (rxs * rys) * fzs
                    w_single[2], w_single[3] = (rxs * fys) * rzs, (rxs * fys) * fzs
                    w_single[4], w_single[5] = (fxs * rys) * rzs, (fxs * rys) * fzs
                    w_single[6], w_single[7] = (fxs * fys) * rzs, (fxs * fys) * fzs
                    i0, j0, k0 = np.int64(lx32), np.int64(ly32), np.int64(lz32)
                    i1, j1, k1 = i0 + 1, j0 + 1, k0 + 1
                for c in range(7, -1, -1):  # PLUS visits the corners 7..0; zero weights are skipped
                    if arith == FIXED:
                        positive = w_fixed[c] > 0
                    elif arith == DOUBLE:
                        positive = w_double[c] > 0
                    else:
                        positive = w_single[c] > 0
                    if not positive:
                        continue
                    idx = _corner(c, i0, j0, k0, i1, j1, k1, nx, nxy, owner_mask, owner)
                    if idx < 0:
                        continue
                    if arith == FIXED:
                        value[idx], acc[idx], crossed = _rule_fixed(mode, value[idx], acc[idx], v, w_fixed[c], imp)
                    elif arith == DOUBLE:
                        value[idx], acc[idx], crossed = _rule_double(mode, value[idx], acc[idx], v, w_double[c], imp)
                    else:
                        value[idx], acc[idx], crossed = _rule_single(mode, value[idx], acc[idx], v, w_single[c], imp)
                    overflow += crossed
    return overflow


@functools.lru_cache(maxsize=None)
def _splat_kernel(arith: int, mode: int):
    """The compiled trilinear loop for one arithmetic and mode (compiled on first use, cached on
    disk). The choices are closure constants, so every branch on them folds away at compile time."""

    @njit(nogil=True, cache=True)
    def kernel(owner, owner_mask, frames, q, m64, m32, runs, importance, min_value, nx, ny, nz, value, acc):
        return _splat_owner(owner, owner_mask, frames, q, m64, m32, arith, mode, runs, importance, min_value, nx, ny, nz, value, acc)

    return kernel


@njit(cache=True, nogil=True)
def _record_rows(arith, mode, frames, q, m64, m32, runs, row_lo, row_hi, offsets, out_idx, importance, min_value, nx, ny, nz):
    """Nearest neighbour, first phase: the flat voxel index of every pixel of the runs
    ``row_lo:row_hi`` goes to ``out_idx[frame, offsets[run] + column - first column]`` (-1 when the
    pixel is not pasted). Branch-free loops (the torch path's roundings), which the compiler
    vectorises."""
    nxy = nx * ny
    half32 = np.float32(0.5)
    for b in range(frames.shape[0]):
        for r in range(row_lo, row_hi):
            y, x0, x1 = runs[r, 0], runs[r, 1], runs[r, 2]
            frow = frames[b, y]
            irow = importance[y] if mode == IMPORTANCE else importance[0]
            dst = out_idx[b]
            base = offsets[r] - x0
            if arith == FIXED:
                px, py, pz, dx, dy, dz = _fixed_row(q, b, 0, y)
                for x in range(x0, x1 + 1):
                    i = (px + x * dx + _FIXED_HALF) >> _FIXED_BITS
                    j = (py + x * dy + _FIXED_HALF) >> _FIXED_BITS
                    k = (pz + x * dz + _FIXED_HALF) >> _FIXED_BITS
                    ok = (frow[x] >= min_value) & (irow[x] != 0 if mode == IMPORTANCE else True)
                    ok = ok & (i >= 0) & (j >= 0) & (k >= 0) & (i < nx) & (j < ny) & (k < nz)
                    dst[base + x] = (k * nxy + j * nx + i) if ok else -1
            elif arith == DOUBLE:
                tx, ty, tz = _float_row(m64, b, np.float64(y))
                ax, ay, az = m64[b, 0, 0], m64[b, 1, 0], m64[b, 2, 0]
                for x in range(x0, x1 + 1):
                    fi = np.floor((tx + x * ax) + _HALF_TOL)
                    fj = np.floor((ty + x * ay) + _HALF_TOL)
                    fk = np.floor((tz + x * az) + _HALF_TOL)
                    ok = (frow[x] >= min_value) & (irow[x] != 0 if mode == IMPORTANCE else True)
                    ok = ok & (fi >= 0) & (fj >= 0) & (fk >= 0) & (fi < nx) & (fj < ny) & (fk < nz)
                    dst[base + x] = (np.int64(fk) * nxy + np.int64(fj) * nx + np.int64(fi)) if ok else -1
            else:
                tx32, ty32, tz32 = _float_row(m32, b, np.float32(y))
                ax32, ay32, az32 = m32[b, 0, 0], m32[b, 1, 0], m32[b, 2, 0]
                for x in range(x0, x1 + 1):
                    xf = np.float32(x)
                    fi = np.floor((tx32 + xf * ax32) + half32)
                    fj = np.floor((ty32 + xf * ay32) + half32)
                    fk = np.floor((tz32 + xf * az32) + half32)
                    ok = (frow[x] >= min_value) & (irow[x] != 0 if mode == IMPORTANCE else True)
                    ok = ok & (fi >= 0) & (fj >= 0) & (fk >= 0) & (fi < nx) & (fj < ny) & (fk < nz)
                    dst[base + x] = (np.int64(fk) * nxy + np.int64(fj) * nx + np.int64(fi)) if ok else -1


@functools.lru_cache(maxsize=None)
def _record_kernel(arith: int, mode: int):
    """:func:`_record_rows` for one arithmetic and mode (closure constants)."""

    @njit(nogil=True, cache=True)
    def record(frames, q, m64, m32, runs, row_lo, row_hi, offsets, out_idx, importance, min_value, nx, ny, nz):
        _record_rows(arith, mode, frames, q, m64, m32, runs, row_lo, row_hi, offsets, out_idx, importance, min_value, nx, ny, nz)

    return record


@functools.lru_cache(maxsize=None)
def _apply_kernel(exact: bool, mode: int):
    """Nearest neighbour, second phase: the recorded pixels in order, only the voxels of ``owner``."""

    @njit(nogil=True, cache=True)
    def apply(owner, owner_mask, frames_flat, flat_pixels, importance_flat, out_idx, value, acc):
        overflow = 0
        for b in range(out_idx.shape[0]):
            frame = frames_flat[b]
            for p in range(out_idx.shape[1]):
                idx = out_idx[b, p]
                if idx < 0 or ((idx >> _OWNER_SHIFT) & owner_mask) != owner:
                    continue
                pixel = flat_pixels[p]
                imp = np.int64(importance_flat[pixel]) if mode == IMPORTANCE else np.int64(0)
                value[idx], acc[idx], crossed = _nearest_rule(exact, mode, value[idx], acc[idx], _as_pixel(frame[pixel]), imp)
                overflow += crossed
        return overflow

    return apply


#: indices recorded per step of the two-phase nearest neighbour (bounds its scratch memory)
_RECORD_PIXELS = 1 << 20

_POOL = None


def _pool(workers: int):
    global _POOL
    if _POOL is None or _POOL._max_workers < workers:
        _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="freehand3d-paste")
    return _POOL


# ---------------------------------------------------------------------- python entry
def mask_runs(mask: np.ndarray) -> np.ndarray:
    """(R, 3) int64 runs ``(row, first column, last column)`` of a boolean (H, W) mask, in row-major
    (PLUS's) order."""
    mask = np.asarray(mask, bool)
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    start_rows, start_cols = np.nonzero(edges == 1)
    _, stop_cols = np.nonzero(edges == -1)  # same row-major order as the starts
    return np.stack([start_rows, start_cols, stop_cols - 1], 1).astype(np.int64).reshape(-1, 3)


class PixelRuns:
    """The pasted pixels of a mask: runs (see :func:`mask_runs`), where each run starts in the
    pixel list (``offsets``) and the flat frame index of every listed pixel (``flat``)."""

    def __init__(self, mask: np.ndarray):
        mask = np.asarray(mask, bool)
        self.shape = mask.shape
        self.runs = mask_runs(mask)
        lengths = self.runs[:, 2] - self.runs[:, 1] + 1
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        # row-major flat indices (rows * width + cols), 8 bytes per pixel and no temporaries
        self.flat = np.flatnonzero(mask).astype(np.int64, copy=False)

    @property
    def n_pixels(self) -> int:
        return len(self.flat)


def record_frames(n_pixels: int) -> int:
    """Frames whose voxel indices nearest neighbour records at a time (about 2**20 pixels)."""
    return max(1, _RECORD_PIXELS // max(1, int(n_pixels)))


def owners_for_threads(threads: int | None = None) -> int:
    """Number of voxel owners: the largest power of two not above the thread count."""
    n = numba.get_num_threads() if threads is None else int(threads)
    return 1 << max(0, n.bit_length() - 1)


def paste(
    method: str,
    arith: int,
    mode: int,
    frames: np.ndarray,
    image_pix_to_voxel: np.ndarray,
    pixels,
    importance: np.ndarray | None,
    min_value: int,
    size,
    value: np.ndarray,
    acc: np.ndarray,
    n_owners: int | None = None,
    scratch: np.ndarray | None = None,
) -> int:
    """Paste (B, H, W) frames (uint8, or any pixel type with float ``value`` buffers and the SINGLE
    arithmetic) with (B, 4, 4) pixel -> voxel matrices into the flat buffers ``value`` / ``acc`` in
    place; pixels below ``min_value`` are skipped; returns how many voxels crossed PLUS's accumulation overflow
    threshold (exact MEAN).

    ``pixels`` is a :class:`PixelRuns` (or a boolean mask). With several threads, nearest neighbour
    runs in two phases: the threads split the rows to record every pixel's voxel, then split the
    voxels to paste the recorded pixels in order; trilinear splatting lets every thread go through
    all pixels and keep its own voxels. ``scratch``: an int64 (:func:`record_frames` (pixels), pixels)
    buffer for the recorded voxel indices (default: allocated per call)."""
    if not isinstance(pixels, PixelRuns):
        pixels = PixelRuns(pixels)
    frames = np.ascontiguousarray(frames)
    if frames.dtype != np.uint8 and (arith != SINGLE or value.dtype.kind != "f"):
        raise ValueError(f"{frames.dtype} frames need the float arithmetic (SINGLE) and a float value buffer")
    if frames.ndim != 3 or tuple(frames.shape[1:]) != tuple(pixels.shape):
        raise ValueError(f"frames of shape {frames.shape[1:]} do not match the pixel mask {tuple(pixels.shape)}")
    mats = np.asarray(image_pix_to_voxel, np.float64)[:, :3, :]
    if arith == FIXED:
        q = np.rint(mats * _FIXED_ONE).astype(np.int64)
    else:
        q = np.zeros((len(mats), 3, 4), np.int64)
    m64 = np.ascontiguousarray(mats)
    m32 = m64.astype(np.float32)
    imp = np.zeros((1, 1), np.uint8) if importance is None else np.ascontiguousarray(importance, np.uint8)
    owners = owners_for_threads() if n_owners is None else int(n_owners)
    nx, ny, nz = (int(v) for v in size)
    # an int for integer pixels (the uint8 path's type), a float threshold for float pixels
    min_value = float(min_value) if frames.dtype.kind == "f" else int(min_value)
    runs = pixels.runs
    if method == "linear":
        kernel = _splat_kernel(int(arith), int(mode))
        args = (frames, q, m64, m32, runs, imp, min_value, nx, ny, nz, value, acc)
        if owners == 1:
            return int(kernel(0, 0, *args))
        # the kernels release the GIL: one thread per voxel owner, each through every pixel
        futures = [_pool(owners).submit(kernel, owner, owners - 1, *args) for owner in range(owners)]
        return int(sum(f.result() for f in futures))
    record = _record_kernel(int(arith), int(mode))
    apply = _apply_kernel(arith != SINGLE, int(mode))
    pool = _pool(owners)
    frames_flat = frames.reshape(len(frames), -1)
    imp_flat = imp.reshape(-1)
    step = record_frames(pixels.n_pixels)
    if scratch is not None and scratch.shape[1] == pixels.n_pixels and len(scratch) >= min(step, len(frames)):
        out_idx = scratch  # the caller's buffer (reused from call to call: a fixed, known amount of memory)
    else:
        out_idx = np.empty((min(step, len(frames)), pixels.n_pixels), np.int64)
    bounds = np.linspace(0, len(runs), owners + 1).astype(np.int64)
    overflow = 0
    for start in range(0, len(frames), step):
        stop = min(start + step, len(frames))
        idx = out_idx[: stop - start]
        chunk = (frames[start:stop], q[start:stop], m64[start:stop], m32[start:stop], runs)
        futures = [
            pool.submit(record, *chunk, bounds[t], bounds[t + 1], pixels.offsets, idx, imp, min_value, nx, ny, nz)
            for t in range(owners)
        ]
        for f in futures:
            f.result()
        futures = [
            pool.submit(apply, t, owners - 1, frames_flat[start:stop], pixels.flat, imp_flat, idx, value, acc)
            for t in range(owners)
        ]
        overflow += sum(f.result() for f in futures)
    return int(overflow)


__all__ = ["paste", "record_frames", "mask_runs", "PixelRuns", "owners_for_threads", "MODE_CODES", "FIXED", "DOUBLE", "SINGLE"]
