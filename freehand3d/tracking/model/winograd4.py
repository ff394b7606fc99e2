"""Winograd F(4x4, 3x3) for the stride-1 (3, 3, 3) convolutions of the local CNN (CPU inference).

F(4x4, 3x3) (Lavin & Gray, CVPR 2016) computes a 4x4 output tile from a 6x6 input tile with 36
products instead of 144 -- 4x fewer multiply-adds than the direct convolution (F(2x2, 3x3): 2.25x)
and fewer transformed values per output pixel (36/16 instead of 16/4):

    Y = A^T [ (G g G^T) * (B^T d B) ] A      (g: 3x3 kernel, d: 6x6 input tile, *: elementwise)

with the interpolation points 0, 1, -1, 2, -2 and infinity (the best conditioned integer set;
B^T's entries are 0, +-1, +-2, +-4, -5, A^T's up to 8, G's 1/4, 1/6, 1/12, 1/24).

The 3 temporal taps of the 3-D kernel are summed inside the Winograd domain: every input frame is
transformed once per time chunk, ``V[p, t, tile, c] = (B^T d B)[p]`` of input frame t, and output
frame j accumulates ``V[p, j] U[p, 0] + V[p, j + 1] U[p, 1] + V[p, j + 2] U[p, 2]`` -- three batched
matrix products (all 36 points at once, MKL through ``torch.bmm``/``baddbmm``, the taps accumulated
in place). The input and output transforms are compiled numba kernels on channels-last frames
(separable, vectorised over channels, split over frames x tile rows between torch's thread count
of Python threads); the spatial zero padding is read in place (no padded copy). Work runs in time
chunks x bands of tile rows so that each band's transformed input and products stay small.

Accuracy: the larger transform entries lose more float32 bits than F(2x2) or the direct conv:
relative max error against ``F.conv3d`` in float64 5.8e-6 .. 8.9e-6 on the DualTrack layers with
random data (direct conv 2e-6 .. 4e-6; measured in docs/tracking.md). float64 inputs run the same
algorithm in float64 (within 1e-12 of the direct conv).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from freehand3d.tracking.model.winograd import WinogradConv3d

#: G of F(4x4, 3x3): 3 kernel taps -> 6 Winograd points (0, 1, -1, 2, -2, infinity).
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
#: B^T (6x6) and A^T (4x6) of the same points (the kernels below spell them out).
_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_AT = (
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)

#: output frames per time chunk of :func:`winograd4_conv3d` (each chunk also transforms the two
#: input frames at its edges; the streamed CNN calls each conv on 16 new frames + 2 carried)
TIME_CHUNK = 16
#: about this many rows (output frames x tiles) per Winograd-domain matrix product: the band of
#: tile rows processed at once; :data:`ROWS_64` for inputs of <= 64 channels. Measured on an AVX2
#: EPYC (Zen 3), CPU-ms per frame of one conv for 512 / 1024 / 2048 / 4096 rows, 1 thread: 64 ch at
#: 128 x 128: 25.4 / 25.0 / 24.5 / 26.6; 128 ch at 64 x 64: 18.3 / 18.9 / 21.7 / 24.7; 256 ch:
#: 13.9 / 15.4 / 15.1 / 15.5; 512 ch: 10.9 flat; 2 threads: 64 ch 67.9 / 45.6 / 40.8 / 37.2, 128 ch
#: 28.2 / 25.6 / 25.8 / 29.1, 256 ch 15.6 / 16.8 / 18.1 / 18.2 (direct conv: 38-43)
ROWS = 1024
ROWS_64 = 4096


def winograd4_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3, 3) conv weight -> U (36, 3, Cin, Cout): ``G g G^T`` of every temporal tap,
    in the weight's dtype (float32: G's entries 1/6, 1/12, 1/24 rounded, 6e-8 relative)."""
    if weight.ndim != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"Winograd F(4x4,3x3) needs (Cout, Cin, 3, 3, 3) weights, got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    g = torch.tensor(_G, dtype=torch.float64)
    kron = torch.kron(g, g).T.to(dtype=weight.dtype, device=weight.device)  # (9, 36): (i j) -> (a b)
    # (k c o, i j): one copy of the (9x smaller) weight, then a single product whose output is
    # already laid out (p, k, c, o) -- transposing the transformed kernels instead cost ~1 s
    w = weight.detach().permute(2, 1, 0, 3, 4).reshape(3 * cin * cout, 9)
    return (kron.T @ w.T).view(36, 3, cin, cout)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tile_in(src, y0, x0, s, v, fi, tile):  # pragma: no cover - compiled
    """B^T d B of the 6x6 tile ``src[y0 : y0 + 6, x0 : x0 + 6]`` into ``v[:, fi, tile]``
    (``s``: (6, 6, C) scratch)."""
    c_in = src.shape[2]
    # along the tile's columns: s[a, q] = sum_b BT[q, b] d[a, b]
    for a in range(6):
        row = src[y0 + a]
        sa = s[a]
        for c in range(c_in):
            d0 = row[x0, c]
            d1 = row[x0 + 1, c]
            d2 = row[x0 + 2, c]
            d3 = row[x0 + 3, c]
            d4 = row[x0 + 4, c]
            d5 = row[x0 + 5, c]
            sa[0, c] = 4.0 * d0 - 5.0 * d2 + d4
            sa[1, c] = d3 + d4 - 4.0 * (d1 + d2)
            sa[2, c] = 4.0 * (d1 - d2) + d4 - d3
            sa[3, c] = 2.0 * (d3 - d1) + d4 - d2
            sa[4, c] = 2.0 * (d1 - d3) + d4 - d2
            sa[5, c] = 4.0 * d1 - 5.0 * d3 + d5
    # along the rows: point (p, q) = sum_a BT[p, a] s[a, q]
    for q in range(6):
        v0 = v[q, fi, tile]
        v1 = v[6 + q, fi, tile]
        v2 = v[12 + q, fi, tile]
        v3 = v[18 + q, fi, tile]
        v4 = v[24 + q, fi, tile]
        v5 = v[30 + q, fi, tile]
        for c in range(c_in):
            d0 = s[0, q, c]
            d1 = s[1, q, c]
            d2 = s[2, q, c]
            d3 = s[3, q, c]
            d4 = s[4, q, c]
            d5 = s[5, q, c]
            v0[c] = 4.0 * d0 - 5.0 * d2 + d4
            v1[c] = d3 + d4 - 4.0 * (d1 + d2)
            v2[c] = 4.0 * (d1 - d2) + d4 - d3
            v3[c] = 2.0 * (d3 - d1) + d4 - d2
            v4[c] = 2.0 * (d1 - d3) + d4 - d2
            v5[c] = 4.0 * d1 - 5.0 * d3 + d5


@njit(cache=True, nogil=True, error_model="numpy")
def _input_transform(x, v, f0, i0, nh, nw, job_lo, job_hi):  # pragma: no cover - compiled
    """B^T d B of the 6x6 tiles (stride 4) in tile rows i0 .. i0 + nh - 1 of the input frames
    f0 .. f0 + F - 1, zero padded by one pixel (and frames outside 0 .. T-1 zero) without a padded
    copy: tiles that reach into the padding are gathered into a zeroed 6x6 scratch tile first,
    the others are read in place (the same arithmetic on the same values either way).

    x : (T, H, W, C) channels-last frames.
    v : (36, F, nh * nw, C) output: ``v[p, i, tile, c]`` = point p of input frame f0 + i, tile
        numbered from tile row i0.
    """
    t_in, h, w, c_in = x.shape
    n_f = v.shape[1]
    s = np.empty((6, 6, c_in), dtype=x.dtype)  # scratch, once per call (not per tile)
    d = np.empty((6, 6, c_in), dtype=x.dtype)  # a border tile with its zero padding
    for job in range(job_lo, min(job_hi, n_f * nh)):
        fi = job // nh
        i = job - fi * nh
        f = f0 + fi
        if f < 0 or f >= t_in:
            for p in range(36):
                for tile in range(i * nw, i * nw + nw):
                    dst = v[p, fi, tile]
                    for c in range(c_in):
                        dst[c] = 0.0
            continue
        xf = x[f]
        y0 = 4 * (i0 + i) - 1  # first input row of the tile row (-1: the padding row)
        rows_inside = y0 >= 0 and y0 + 6 <= h
        for j in range(nw):
            tile = i * nw + j
            x0 = 4 * j - 1
            if rows_inside and x0 >= 0 and x0 + 6 <= w:
                _tile_in(xf, y0, x0, s, v, fi, tile)
                continue
            for a in range(6):
                y = y0 + a
                for b in range(6):
                    xx = x0 + b
                    db = d[a, b]
                    if 0 <= y < h and 0 <= xx < w:
                        src = xf[y, xx]
                        for c in range(c_in):
                            db[c] = src[c]
                    else:
                        for c in range(c_in):
                            db[c] = 0.0
            _tile_in(d, 0, 0, s, v, fi, tile)


@njit(cache=True, nogil=True, error_model="numpy")
def _output_transform(m, bias, has_bias, out, i0, nh, nw, job_lo, job_hi):  # pragma: no cover - compiled
    """A^T M A of the tiles in tile rows i0 .. i0 + nh - 1 (+ bias) into channels-last output frames.

    m : (36, n * nh * nw, C) Winograd-domain products (tiles numbered from tile row i0);
    out : (n, H, W, C), W <= 4 nw.
    """
    n, h, w, c_out = out.shape
    tiles = nh * nw
    s = np.empty((4, 6, c_out), dtype=out.dtype)  # scratch, once per call (not per tile)
    for job in range(job_lo, min(job_hi, n * nh)):
        f = job // nh
        i = job - f * nh
        for j in range(nw):
            row = f * tiles + i * nw + j
            # along the first Winograd index: s[y, q] = sum_a AT[y, a] m[a, q]
            for q in range(6):
                for c in range(c_out):
                    m0 = m[q, row, c]
                    m1 = m[6 + q, row, c]
                    m2 = m[12 + q, row, c]
                    m3 = m[18 + q, row, c]
                    m4 = m[24 + q, row, c]
                    m5 = m[30 + q, row, c]
                    p12 = m1 + m2
                    d12 = m1 - m2
                    p34 = m3 + m4
                    d34 = m3 - m4
                    s[0, q, c] = m0 + p12 + p34
                    s[1, q, c] = d12 + 2.0 * d34
                    s[2, q, c] = p12 + 4.0 * p34
                    s[3, q, c] = d12 + 8.0 * d34 + m5
            for yy in range(4):
                y = 4 * (i0 + i) + yy
                if y >= h:
                    break
                for xx in range(4):
                    x0 = 4 * j + xx
                    if x0 >= w:
                        break
                    for c in range(c_out):
                        m0 = s[yy, 0, c]
                        m1 = s[yy, 1, c]
                        m2 = s[yy, 2, c]
                        m3 = s[yy, 3, c]
                        m4 = s[yy, 4, c]
                        m5 = s[yy, 5, c]
                        if xx == 0:
                            val = m0 + m1 + m2 + m3 + m4
                        elif xx == 1:
                            val = m1 - m2 + 2.0 * (m3 - m4)
                        elif xx == 2:
                            val = m1 + m2 + 4.0 * (m3 + m4)
                        else:
                            val = m1 - m2 + 8.0 * (m3 - m4) + m5
                        if has_bias:
                            val += bias[c]
                        out[f, y, x0, c] = val


_POOL = None


def _parallel(kernel, n_jobs: int, *args) -> None:
    """``kernel(*args, lo, hi)`` over jobs 0 .. n_jobs - 1, split into torch's thread count of
    contiguous ranges run by Python threads (the kernels release the GIL). Deliberately not
    numba's own parallel loops: starting numba's OpenMP pool changed the OpenMP state torch's
    kernels run under (a forward then differed from the next by float32 rounding), and its
    workqueue layer refuses concurrent launches (live tracking runs beside other work)."""
    global _POOL
    n = max(1, min(torch.get_num_threads(), n_jobs))
    if n == 1:
        kernel(*args, 0, n_jobs)
        return
    if _POOL is None or _POOL._max_workers < n:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=n, thread_name_prefix="winograd4")
    step = -(-n_jobs // n)
    futures = [_POOL.submit(kernel, *args, lo, lo + step) for lo in range(step, n_jobs, step)]
    kernel(*args, 0, step)  # the first range in this thread
    for fut in futures:
        fut.result()


def winograd4_conv3d(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None,
                     valid_time: bool = False, chunk: int | None = None, rows: int | None = None) -> torch.Tensor:
    """Conv3d (3x3x3, stride 1, zero padding 1) of ``x`` (B, Cin, T, H, W) with the transformed
    kernels ``u`` (36, 3, Cin, Cout) of :func:`winograd4_kernels`; returns (B, Cout, T', H, W) in
    channels-last-3d memory format (T' = T, or T - 2 with ``valid_time``: no temporal padding,
    output j from input frames j .. j + 2). CPU, float32 or float64.

    Work is blocked in time chunks of ``chunk`` output frames (default :data:`TIME_CHUNK`; each
    chunk transforms its two halo frames again) and, inside a chunk, in bands of tile rows so that
    each matrix product has about ``rows`` rows (default :data:`ROWS`, :data:`ROWS_64`) and the transformed band
    stays in cache. The result does not depend on either beyond rounding order (it does not at
    all: every output sums the same products in the same order)."""
    bsz, cin, t, h, w = x.shape
    cout = u.shape[3]
    if tuple(u.shape[:3]) != (36, 3, cin):
        raise ValueError(f"kernels {tuple(u.shape)} do not fit an input of {cin} channels")
    nh, nw = (h + 3) // 4, (w + 3) // 4
    t_out = t - 2 if valid_time else t
    out = x.new_empty(bsz, max(t_out, 0), h, w, cout)
    if t_out <= 0:
        return out.permute(0, 4, 1, 2, 3)
    chunk = max(1, min(chunk or TIME_CHUNK, t_out))
    rows = rows or (ROWS_64 if cin <= 64 else ROWS)
    band = max(1, min(nh, rows // (chunk * nw)))
    if not x.is_contiguous(memory_format=torch.channels_last_3d):
        x = x.contiguous(memory_format=torch.channels_last_3d)
    frames = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): a view of the channels-last-3d input
    u = u.to(x.dtype)
    has_bias = bias is not None
    bias_np = (bias.to(x.dtype) if has_bias else x.new_zeros(1)).numpy()
    v_buf = x.new_empty(36 * (chunk + 2) * band * nw * cin)
    m_buf = x.new_empty(36 * chunk * band * nw * cout)
    first = 0 if valid_time else -1  # input frame read by tap 0 of output 0
    for b in range(bsz):
        x_np = frames[b].numpy()
        for lo in range(0, t_out, chunk):
            n = min(chunk, t_out - lo)
            out_np = out[b, lo : lo + n].numpy()
            for i0 in range(0, nh, band):
                nb = min(band, nh - i0)
                v = v_buf[: 36 * (n + 2) * nb * nw * cin].view(36, n + 2, nb * nw, cin)
                m = m_buf[: 36 * n * nb * nw * cout].view(36, n * nb * nw, cout)
                _parallel(_input_transform, (n + 2) * nb, x_np, v.numpy(), first + lo, i0, nb, nw)
                _products(v, u, m, n)
                _parallel(_output_transform, n * nb, m.numpy(), bias_np, has_bias, out_np, i0, nb, nw)
    return out.permute(0, 4, 1, 2, 3)


def _products(v: torch.Tensor, u: torch.Tensor, m: torch.Tensor, n: int) -> None:
    """m[p] = sum over the temporal taps k of v[p, k : k + n] @ u[p, k] (rows: frames x tiles) for
    all 36 points p at once: one batched product per tap, accumulated in place (beta = 1).

    Batched rather than 36 separate products: the same speed with 1 thread, but with 2 threads on
    a loaded machine 108 small parallel calls per band each waited at an OpenMP barrier for a
    descheduled thread (measured 20-60x slower than one batched call per tap)."""
    rows = n * v.shape[2]
    cin = v.shape[3]
    torch.bmm(v[:, 0:n].reshape(36, rows, cin), u[:, 0], out=m)
    torch.baddbmm(m, v[:, 1 : n + 1].reshape(36, rows, cin), u[:, 1], out=m)
    torch.baddbmm(m, v[:, 2 : n + 2].reshape(36, rows, cin), u[:, 2], out=m)


class Winograd4Conv3d(WinogradConv3d):
    """Inference stand-in for a bias-optional ``Conv3d(k=(3,3,3), stride=1, padding=1)`` running
    Winograd F(4x4,3x3) on CPU float32/float64 (anything else -- CUDA, autocast, bf16 -- calls
    ``F.conv3d`` with the original weights, as :class:`WinogradConv3d`). Output channels-last-3d."""

    @staticmethod
    def _kernels(weight: torch.Tensor) -> torch.Tensor:
        return winograd4_kernels(weight)

    def _fast(self, x: torch.Tensor, valid_time: bool) -> torch.Tensor:
        return winograd4_conv3d(x, self.u, self.bias, valid_time, self.chunk)
