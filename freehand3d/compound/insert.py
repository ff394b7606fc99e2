"""Pasting frames into a voxel grid: nearest-neighbour and trilinear (splatting) insertion with
LATEST, MAXIMUM, MEAN and importance-weighted compounding, as vectorised torch scatters.

Two arithmetics are offered:

``exact_plus=True``
    Bit-for-bit PLUS (``vtkIGSIOPasteSliceIntoVolume``): with ``fixed_point=True`` (PLUS's
    ``Optimization="FULL"``) the pixel-to-voxel matrix is quantised to 14 fractional bits and voxel
    positions are computed in integers, rounding is ``floor(x + 0.5)``; the MEAN compounding
    reproduces PLUS's running average that rounds (trilinear) or truncates (nearest neighbour) to
    the output type after every pixel, in PLUS's pixel order. The accumulation buffer holds PLUS's
    uint16 units (256 = one whole pixel). Voxels are independent of each other, so the running
    average is replayed for all voxels at once, one "k-th contribution of each voxel" level at a
    time.
``exact_plus=False`` (default)
    The fast path: float32 positions, exact weighted means from float sums (no intermediate
    rounding), LATEST/MAXIMUM as in PLUS. The accumulation buffer holds the sum of weights.

LATEST keeps, for each voxel, the value of the last pixel in (frame, row, column) order that maps
to it; this is made deterministic by a ``scatter_reduce(amax)`` of the pixel order followed by a
gather, never by relying on the write order of a scatter.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: PLUS's fixed-point format: 14 fractional bits
FIXED_BITS = 14
FIXED_ONE = 1 << FIXED_BITS
FIXED_HALF = 1 << (FIXED_BITS - 1)
#: PLUS's accumulation units (one whole pixel), maximum and overflow threshold (uint16 buffer)
ACC_UNIT = 256
ACC_MAX = 65535
ACC_THRESHOLD = ACC_MAX - ACC_UNIT
#: trilinear weight below which LATEST / MAXIMUM leave a voxel alone (PLUS's minWeight)
MIN_SPLAT_WEIGHT = 0.125
#: PLUS's floor tolerance (2**-17)
FLOOR_TOL = 7.62939453125e-06

COMPOUNDINGS = ("latest", "max", "mean", "importance")
#: torch type of each volume / pixel type (torch has no uint32: it goes through int64 on output)
_TORCH_TYPES = {
    np.dtype(np.uint8): torch.uint8, np.dtype(np.int8): torch.int8, np.dtype(np.int16): torch.int16,
    np.dtype(np.int32): torch.int32, np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
    np.dtype(np.uint16): torch.int32, np.dtype(np.uint32): torch.int64,
}


def accumulation_dtype(pixel_type) -> torch.dtype:
    """Float buffer type for frames of ``pixel_type`` other than uint8: float32 when every pixel
    value is exactly a float32 (8- and 16-bit integers, float32), else float64."""
    dt = np.dtype(pixel_type)
    return torch.float64 if dt.itemsize > 2 and dt != np.float32 else torch.float32
METHODS = ("nearest", "linear")


def quantize_fixed(matrices: np.ndarray) -> np.ndarray:
    """PLUS's double -> fixed conversion: round to the nearest multiple of 2**-14 (ties to even),
    returned as int64 raw values (value * 16384)."""
    return np.rint(np.asarray(matrices, np.float64) * FIXED_ONE).astype(np.int64)


class PasteState:
    """Output and accumulation buffers on a device, and the scatter operations that update them.

    The buffers have one extra slot at the end (index ``n_voxels``): contributions that must not
    land anywhere (outside the grid, masked, rejected) are sent there instead of being removed,
    which avoids slow boolean compaction of large tensors.

    Parameters
    ----------
    n_voxels : number of voxels (flat).
    compounding : "latest", "max", "mean" or "importance".
    exact_plus : PLUS's integer arithmetic (see module docstring) or the fast float path.
    device : torch device.
    """

    def __init__(self, n_voxels: int, compounding: str, exact_plus: bool, device, pixel_type=np.uint8):
        if compounding not in COMPOUNDINGS:
            raise ValueError(f"compounding must be one of {COMPOUNDINGS}, got {compounding!r}")
        self.pixel_type = np.dtype(pixel_type)
        self.n_voxels = int(n_voxels)
        self.dump = self.n_voxels  # the extra slot
        self.compounding = compounding
        self.exact_plus = bool(exact_plus)
        self.device = torch.device(device)
        float_sums = not self.exact_plus and compounding in ("mean", "importance")
        n = self.n_voxels + 1
        # fast MEAN keeps sum(w*v) in float32; everything else keeps the current value. Frames other
        # than uint8 accumulate in floats: float32 where it holds every pixel value exactly,
        # float64 for int32 / uint32 / float64 pixels
        if self.pixel_type == np.uint8:
            value_dtype = torch.float32 if float_sums else torch.int32
        else:
            value_dtype = accumulation_dtype(self.pixel_type)
        self.value = torch.zeros(n, dtype=value_dtype, device=self.device)
        if self.pixel_type != np.uint8 and compounding == "max":
            # an empty voxel takes the first pixel, negative ones too (a scatter amax from -inf);
            # result() shows empty voxels as 0
            self.value.fill_(-math.inf)
        # weights sum in float32 (the uint8 path's arithmetic), in float64 for the float64 buffers
        acc_dtype = torch.int32 if self.exact_plus else torch.float32
        if self.pixel_type != np.uint8 and value_dtype == torch.float64:
            acc_dtype = torch.float64
        self.acc = torch.zeros(n, dtype=acc_dtype, device=self.device)
        # LATEST: global order of the last writer of each voxel (monotonic across calls, no reset)
        self._order = None
        self._next_order = 0
        self.overflow_count = 0

    @staticmethod
    def bytes_per_voxel(compounding: str, exact_plus: bool, scratch: bool = True, pixel_type=np.uint8,
                        output_type=np.uint8) -> int:
        """Buffer bytes per voxel (value + accumulation + int64 order scratch + output); the
        compiled CPU kernels need no order scratch (``scratch=False``)."""
        order = 8 if scratch and compounding in ("latest", "max") else 0
        value = 4 if np.dtype(pixel_type) == np.uint8 else accumulation_dtype(pixel_type).itemsize
        return value + max(4, value) + order + np.dtype(output_type).itemsize

    # ------------------------------------------------------------------ helpers
    def _scratch(self) -> torch.Tensor:
        if self._order is None:
            self._order = torch.full((self.n_voxels + 1,), -1, dtype=torch.int64, device=self.device)
        return self._order

    def _last_writer(self, idx: torch.Tensor, eligible: torch.Tensor | None = None) -> torch.Tensor:
        """Voxel index per contribution, replaced by the dump slot unless the contribution is the
        last (in order, across all calls) for its voxel."""
        order = self._scratch()
        rank = torch.arange(self._next_order, self._next_order + idx.numel(), device=idx.device, dtype=torch.int64)
        self._next_order += idx.numel()
        if eligible is not None:
            idx = idx.masked_fill(~eligible, self.dump)
        order.scatter_reduce_(0, idx, rank, reduce="amax", include_self=True)
        return idx.masked_fill(order.index_select(0, idx) != rank, self.dump)

    def _first_writer(self, idx: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Voxel index of the first eligible contribution of each voxel, others sent to the dump."""
        n = idx.numel()
        order = torch.full((self.n_voxels + 1,), n + 1, dtype=torch.int64, device=self.device)
        rank = torch.arange(n, device=idx.device, dtype=torch.int64)
        target = torch.where(eligible, idx, torch.full_like(idx, self.dump))
        order.scatter_reduce_(0, target, rank, reduce="amin", include_self=True)
        first = (order.index_select(0, target) == rank) & eligible
        return torch.where(first, idx, torch.full_like(idx, self.dump))

    # ------------------------------------------------------------------ nearest neighbour
    def paste_nearest(self, idx: torch.Tensor, values: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Paste pixels that map to voxels ``idx`` (flat int64, in PLUS's pixel order; the dump slot
        for pixels that must be ignored). ``values`` int32; ``weights`` importance (uint8) or None."""
        if idx.numel() == 0:
            return
        mode = self.compounding
        typed = values.to(self.value.dtype)
        if mode == "latest":
            target = self._last_writer(idx)
            self.value.scatter_(0, target, typed)
            self.acc.scatter_(0, target, ACC_UNIT if self.exact_plus else 1.0)
        elif mode == "max":
            self.value.scatter_reduce_(0, idx, typed, reduce="amax", include_self=True)
            self.acc.scatter_(0, idx, ACC_UNIT if self.exact_plus else 1.0)
        elif self.exact_plus:
            _replay_nearest_mean(self, idx, values, None if mode != "importance" else weights.to(torch.int64))
        else:
            w = torch.ones_like(values, dtype=torch.float32) if weights is None else weights.to(torch.float32)
            # float32 sums for uint8 (and 8/16-bit, float32) pixels, float64 for the float64 buffers
            self.value.index_add_(0, idx, w * values.to(self.value.dtype))
            self.acc.index_add_(0, idx, w.to(self.acc.dtype))
        self._clear_dump()

    def _clear_dump(self) -> None:
        self.value[self.dump] = -math.inf if (self.pixel_type != np.uint8 and self.compounding == "max") else 0
        self.acc[self.dump] = 0

    # ------------------------------------------------------------------ trilinear splatting
    def paste_linear(
        self,
        idx: torch.Tensor,
        values: torch.Tensor,
        weights: torch.Tensor,
        importance: torch.Tensor | None = None,
    ) -> None:
        """Splat pixels onto the 8 voxels around them.

        Parameters
        ----------
        idx : (M, 8) int64 voxel indices of the corners (the dump slot for ignored pixels), rows in
            PLUS's pixel order and corners in PLUS's corner order.
        values : (M,) int32 pixel values.
        weights : (M, 8) trilinear weights: int64 fixed-point raw values (exact_plus) or floats.
        importance : (M,) uint8 importance (importance compounding only).
        """
        if idx.numel() == 0:
            return
        mode = self.compounding
        # PLUS visits the corners from 7 down to 0 for each pixel: flatten in that order
        idx = idx.flip(1).reshape(-1)
        weights = weights.flip(1).reshape(-1)
        values = values.repeat_interleave(8)
        if importance is not None:
            importance = importance.repeat_interleave(8)
        # PLUS skips zero-weight corners entirely
        idx = torch.where(weights > 0, idx, torch.full_like(idx, self.dump))
        # fixed-point raw weights (Optimization FULL) or float weights (PARTIAL / the fast path)
        threshold = MIN_SPLAT_WEIGHT if weights.dtype.is_floating_point else FIXED_ONE // 8
        typed = values.to(self.value.dtype)
        if mode == "latest":
            target = self._last_writer(idx, weights >= threshold)
            self.value.scatter_(0, target, typed)
            self.acc.scatter_(0, target, self._acc_from_weight(weights))
        elif mode == "max":
            eligible = weights >= threshold
            pool = torch.where(eligible, idx, torch.full_like(idx, self.dump))
            before = self.value.index_select(0, pool)
            self.value.scatter_reduce_(0, pool, typed, reduce="amax", include_self=True)
            # PLUS updates a voxel (and its accumulation) only when a pixel is strictly brighter:
            # the accumulation comes from the first pixel that reached the final maximum
            reached = eligible & (typed > before) & (typed == self.value.index_select(0, pool))
            target = self._first_writer(pool, reached)
            self.acc.scatter_(0, target, self._acc_from_weight(weights))
        elif self.exact_plus:
            if weights.dtype.is_floating_point:
                _replay_linear_mean(self, idx, values, weights, importance, fixed=False)
            else:
                _replay_linear_mean(self, idx, values, weights, importance, fixed=True)
        else:
            w = weights.to(torch.float32)
            if importance is not None:
                w = w * importance.to(torch.float32)
            self.value.index_add_(0, idx, w * values.to(self.value.dtype))
            self.acc.index_add_(0, idx, w.to(self.acc.dtype))
        self._clear_dump()

    def _acc_from_weight(self, weights: torch.Tensor) -> torch.Tensor:
        if self.exact_plus:
            if weights.dtype.is_floating_point:
                return _plus_round_double(weights.to(torch.float64) * ACC_UNIT).to(torch.int32)
            return _round_fixed(weights * ACC_UNIT).to(torch.int32)
        return weights.to(torch.float32)

    # ------------------------------------------------------------------ results
    #: voxels per step of :meth:`result` on the CPU: its temporaries are a few of these, whatever the volume
    RESULT_CHUNK = 1 << 18

    def result(self, output_type=np.uint8) -> torch.Tensor:
        """Output values (flat, without the dump slot) as ``output_type``: means of the float sums
        (MEAN / importance) or the kept values (LATEST / MAXIMUM); integer outputs round
        ``floor(x + 0.5)`` and clip to the type's range, float outputs keep the value. Empty voxels
        are 0. On the CPU computed :attr:`RESULT_CHUNK` voxels at a time (numpy: element-wise IEEE
        arithmetic, the same values as torch's one pass) into the output, so that the only per-voxel
        memory it adds is the output itself."""
        output_type = np.dtype(output_type)
        if self.device.type != "cpu":
            return self._result_part(self.value[: self.n_voxels], self.acc[: self.n_voxels], output_type)
        value, acc = self.value.numpy(), self.acc.numpy()
        target = np.dtype(str(_TORCH_TYPES[output_type]).replace("torch.", ""))  # torch has no uint16 / uint32
        out = np.empty(self.n_voxels, target)
        for start in range(0, self.n_voxels, self.RESULT_CHUNK):
            stop = min(start + self.RESULT_CHUNK, self.n_voxels)
            out[start:stop] = self._result_part_numpy(value[start:stop], acc[start:stop], output_type, target)
        return torch.from_numpy(out)

    def _result_part_numpy(self, value: np.ndarray, acc: np.ndarray, output_type: np.dtype, target: np.dtype) -> np.ndarray:
        """:meth:`_result_part` in numpy (same dtypes at every step, so the same values)."""
        float_sums = not self.exact_plus and self.compounding in ("mean", "importance")
        if output_type == np.uint8 and self.pixel_type == np.uint8:  # the original uint8 path
            if value.dtype == np.float32:
                mean = np.where(acc > 0, value / np.maximum(acc, np.float32(1e-12)), np.float32(0))
                return np.clip(np.floor(mean + np.float32(0.5)), 0, 255).astype(np.uint8)
            return np.clip(value, 0, 255).astype(np.uint8)
        if float_sums:
            value = np.where(acc > 0, value / np.maximum(acc, acc.dtype.type(1e-12)).astype(value.dtype), value.dtype.type(0))
        elif self.compounding == "max" and self.pixel_type != np.uint8:
            value = np.where(acc > 0, value, value.dtype.type(0))
        if output_type.kind == "f":
            return value.astype(target)
        info = np.iinfo(output_type)
        if value.dtype.kind == "f":
            value = np.floor(value + value.dtype.type(0.5))
            # float64 holds every bound of the integer output types exactly
            value = np.clip(value.astype(np.float64), float(info.min), float(info.max))
        else:
            value = np.clip(value.astype(np.int64), int(info.min), int(info.max))
        return value.astype(target)

    def _result_part(self, value: torch.Tensor, acc: torch.Tensor, output_type: np.dtype) -> torch.Tensor:
        float_sums = not self.exact_plus and self.compounding in ("mean", "importance")
        if output_type == np.uint8 and self.pixel_type == np.uint8:  # the original uint8 path
            if value.dtype == torch.float32:
                mean = torch.where(acc > 0, value / acc.clamp_min(1e-12), torch.zeros_like(value))
                return torch.floor(mean + 0.5).clamp_(0, 255).to(torch.uint8)
            return value.clamp(0, 255).to(torch.uint8)
        if float_sums:
            value = torch.where(acc > 0, value / acc.clamp_min(1e-12).to(value.dtype), torch.zeros_like(value))
        elif self.compounding == "max" and self.pixel_type != np.uint8:
            value = torch.where(acc > 0, value, torch.zeros_like(value))
        if output_type.kind == "f":
            return value.to(_TORCH_TYPES[output_type])
        info = np.iinfo(output_type)
        if value.dtype.is_floating_point:
            value = torch.floor(value + 0.5)
            # float64 holds every bound of the integer output types exactly
            value = value.to(torch.float64).clamp_(float(info.min), float(info.max))
        else:
            value = value.to(torch.int64).clamp_(int(info.min), int(info.max))
        return value.to(_TORCH_TYPES[output_type])

    def filled(self) -> torch.Tensor:
        """Boolean (flat) mask of voxels that received data (PLUS: accumulation != 0)."""
        return self.acc[: self.n_voxels] > 0


# ---------------------------------------------------------------------- sequential replays
def _levels(idx: torch.Tensor, dump: int):
    """Order contributions for a level-by-level replay.

    Level k holds the k-th contribution (in the original order) of every voxel that has at least
    k+1; within a level every voxel appears once, so a level is one vectorised update. Returns the
    permutation of the non-dump contributions grouped by level and the level sizes."""
    # int32 keys sort several times faster than int64 on CPU
    key = idx.to(torch.int32) if dump < 2**31 - 1 else idx
    sorted_idx, order = torch.sort(key, stable=True)
    n_valid = int(torch.searchsorted(sorted_idx, torch.tensor([dump], device=idx.device, dtype=sorted_idx.dtype)).item())
    sorted_idx, order = sorted_idx[:n_valid], order[:n_valid]
    position = torch.arange(n_valid, device=idx.device)
    starts = torch.ones(n_valid, dtype=torch.bool, device=idx.device)
    starts[1:] = sorted_idx[1:] != sorted_idx[:-1]
    group_start = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), 0).values
    rank = position - group_start
    small = torch.int16 if n_valid and int(rank.max()) < 2**15 else torch.int64
    rank_sorted, by_rank = torch.sort(rank.to(small), stable=True)
    counts = torch.bincount(rank_sorted.to(torch.int64)).tolist() if n_valid else []
    return order.index_select(0, by_rank), counts


def _replay_nearest_mean(state: PasteState, idx, values, unit_weights) -> None:
    """PLUS's nearest-neighbour running mean: ``out = (in*w + out*acc) // (acc + w)`` in integers,
    ``w = 256`` (or the importance value); past the overflow threshold a 1/256 recursive filter."""
    if unit_weights is not None:
        idx = torch.where(unit_weights > 0, idx, torch.full_like(idx, state.dump))
    perm, counts = _levels(idx, state.dump)
    v_all = idx.index_select(0, perm)
    x_all = values.to(torch.int64).index_select(0, perm)
    w_all = None if unit_weights is None else unit_weights.index_select(0, perm)
    offset = 0
    for count in counts:
        v = v_all[offset : offset + count]
        x = x_all[offset : offset + count]
        w = ACC_UNIT if w_all is None else w_all[offset : offset + count]
        offset += count
        out = state.value.index_select(0, v).to(torch.int64)
        acc = state.acc.index_select(0, v).to(torch.int64)
        normal = acc <= ACC_THRESHOLD
        new_acc = acc + w
        state.overflow_count += int(((new_acc > ACC_THRESHOLD) & normal).sum())
        averaged = torch.div(x * w + out * acc, new_acc.clamp_min(1), rounding_mode="floor")
        filtered = (x.double() * (1.0 / 256.0) + out.double() * (255.0 / 256.0)).to(torch.int64)
        state.value.scatter_(0, v, torch.where(normal, averaged, filtered).to(state.value.dtype))
        state.acc.scatter_(0, v, torch.where(normal, new_acc.clamp_max(ACC_MAX), acc).to(state.acc.dtype))


def _round_fixed(raw: torch.Tensor) -> torch.Tensor:
    """PLUS's Round of a fixed value: floor(x + 0.5) on the raw integer."""
    return (raw + FIXED_HALF) >> FIXED_BITS


def _divide_round_half_even(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """round(numerator / denominator), ties to even, for non-negative int64 numerators and positive
    denominators."""
    quotient = torch.div(numerator, denominator, rounding_mode="floor")
    twice_rest = (numerator - quotient * denominator) * 2
    up = (twice_rest > denominator) | ((twice_rest == denominator) & (quotient % 2 == 1))
    return quotient + up.to(quotient.dtype)


def _plus_round_double(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + (0.5 + FLOOR_TOL)).to(torch.int64)


def _replay_linear_mean(state: PasteState, idx, values, weights, importance, fixed: bool) -> None:
    """PLUS's trilinear running mean, one level of contributions at a time: 14-bit fixed point
    (Optimization FULL) or double precision (PARTIAL / NONE)."""
    if importance is not None:
        idx = torch.where(importance > 0, idx, torch.full_like(idx, state.dump))
    perm, counts = _levels(idx, state.dump)
    v_all = idx.index_select(0, perm)
    x_all = values.to(torch.int64 if fixed else torch.float64).index_select(0, perm)
    f_all = weights.index_select(0, perm)
    if not fixed:
        f_all = f_all.to(torch.float64)
    imp_all = None if importance is None else importance.to(x_all.dtype).index_select(0, perm)
    offset = 0
    for count in counts:
        sl = slice(offset, offset + count)
        offset += count
        v, x, f = v_all[sl], x_all[sl], f_all[sl]
        out = state.value.index_select(0, v).to(x.dtype)
        acc = state.acc.index_select(0, v).to(x.dtype)
        if fixed:
            if imp_all is None:
                r = acc * (FIXED_ONE // ACC_UNIT)  # fixed(acc / 256): exact
                a = f + r
                numerator = f * x + r * out
                new_a = a * ACC_UNIT
            else:
                imp = imp_all[sl]
                a = imp * f + (acc << FIXED_BITS)
                numerator = x * imp * f + ((out * acc) << FIXED_BITS)
                new_a = a
            # fixed / fixed: PLUS converts the double quotient back to fixed (nearest, ties to
            # even) and rounds that; done here in exact integers (a tie is exactly representable
            # in double, so the double quotient never moves a value across a tie)
            new_out = _round_fixed(_divide_round_half_even(numerator << FIXED_BITS, a))
            limit = ACC_MAX << FIXED_BITS
            state.overflow_count += int(((new_a > (ACC_THRESHOLD << FIXED_BITS)) & (acc <= ACC_THRESHOLD)).sum())
            new_acc = torch.where(new_a < limit, _round_fixed(new_a), torch.full_like(new_a, ACC_MAX))
        else:
            if imp_all is None:
                r = acc / ACC_UNIT
                a = f + r
                new_out = _plus_round_double((f * x + r * out) / a)
                new_a = a * ACC_UNIT
            else:
                imp = imp_all[sl]
                new_a = imp * f + acc
                new_out = _plus_round_double((x * imp * f + out * acc) / new_a)
            new_acc = torch.where(new_a < ACC_MAX, _plus_round_double(new_a), torch.full_like(new_out, ACC_MAX))
        state.value.scatter_(0, v, new_out.to(state.value.dtype))
        state.acc.scatter_(0, v, new_acc.to(state.acc.dtype))


# ---------------------------------------------------------------------- positions
def voxel_positions_fixed(pixel_xy: torch.Tensor, image_pix_to_voxel: np.ndarray, device) -> torch.Tensor:
    """Raw fixed-point voxel coordinates (B, P, 3) int64 of pixels (P, 2) int64 for matrices (B, 4, 4).

    Exactly PLUS's integer arithmetic: ``origin + x * x_axis + y * y_axis`` on quantised columns."""
    q = torch.as_tensor(quantize_fixed(image_pix_to_voxel), device=device)  # (B, 4, 4)
    x = pixel_xy[:, 0].view(1, -1, 1)
    y = pixel_xy[:, 1].view(1, -1, 1)
    return q[:, None, :3, 3] + x * q[:, None, :3, 0] + y * q[:, None, :3, 1]


def voxel_positions_float(pixel_xy: torch.Tensor, image_pix_to_voxel, dtype, device) -> torch.Tensor:
    """Continuous voxel coordinates (B, P, 3) of pixels (P, 2) for matrices (B, 4, 4).

    Evaluated as ``(origin + y * y_axis) + x * x_axis`` element by element (no matrix product, whose
    summation order and fused multiply-adds depend on the BLAS): the compiled kernels round the same
    way."""
    m = torch.as_tensor(np.asarray(image_pix_to_voxel), dtype=dtype, device=device)
    x = pixel_xy[:, 0].to(dtype).view(1, -1, 1)
    y = pixel_xy[:, 1].to(dtype).view(1, -1, 1)
    return (m[:, None, :3, 3] + y * m[:, None, :3, 1]) + x * m[:, None, :3, 0]


__all__ = [
    "PasteState",
    "quantize_fixed",
    "voxel_positions_fixed",
    "voxel_positions_float",
    "FIXED_BITS",
    "ACC_UNIT",
    "METHODS",
    "COMPOUNDINGS",
]
