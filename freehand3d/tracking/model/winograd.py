"""Winograd F(2x2, 3x3) for the stride-1 (3, 3, 3) convolutions of the local CNN (inference only).

A plain 3x3 convolution spends 9 multiply-adds per output pixel, input channel and output channel.
Winograd's minimal filtering algorithm F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016) computes a 2x2 output tile from a 4x4 input tile with
16 products instead of 36, i.e. 2.25x fewer multiply-adds, at the price of cheap linear transforms:

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (g: 3x3 kernel, d: 4x4 input tile, *: elementwise)

Per tile position (a, b) of the 4x4 transformed domain the sum over input channels is a matrix
product, so a layer becomes 16 batched matrix products. Here the 3 temporal taps of the 3-D kernel
are part of that sum too: output frame t accumulates ``V[t-1] U[0] + V[t] U[1] + V[t+1] U[2]``, where
``V[t]`` holds the transformed 4x4 tiles of input frame t and ``U[k]`` the transformed spatial kernels
of temporal tap k. Frames outside the clip are zeros, exactly like the convolution's padding.

Time is processed in chunks (one frame of halo on each side) so the 4x larger transformed input never
exists for the whole clip; every output frame sums the same three products in the same order in
any chunking, so the result does not depend on the chunk size beyond the rounding of the matrix
products (tested: float64 within 1e-12 of ``F.conv3d`` for every chunking).

The matrix products go through oneDNN's float32 GEMM (``torch.ops.mkldnn._linear_pointwise``),
which on the project's AMD CPU runs ~4x faster than ``torch.mm`` (MKL); float64 uses ``addmm``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: G of F(2x2, 3x3): 3 kernel taps -> 4 Winograd points.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))

#: Output frames per chunk of :func:`winograd_conv3d`. The transformed input of one chunk holds
#: 4 x (chunk + 2) input frames.
DEFAULT_CHUNK = 4

#: :class:`WinogradConv3d` picks its chunk so that each matrix product has about this many rows
#: (chunk x tiles per frame), at least 4 frames: measured best on the 128..512-channel layers.
ROWS_PER_PRODUCT = 2048


def winograd_kernels(weight: torch.Tensor) -> torch.Tensor:
    """(Cout, Cin, 3, 3, 3) conv weight -> U (3, 16, Cout, Cin): ``G g G^T`` of every temporal tap,
    the 4x4 Winograd points flattened row-major, in the weight's dtype."""
    if weight.ndim != 5 or tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"Winograd F(2x2,3x3) needs (Cout, Cin, 3, 3, 3) weights, got {tuple(weight.shape)}")
    cout, cin = weight.shape[:2]
    # one small-N matrix product: (o c t, i j) @ kron(G, G)^T -> (o c t, a b); the entries of G are
    # 0, +-0.5 and 1, so float32 loses at most an ulp here (and is 2x faster than float64)
    g = torch.tensor(_G, dtype=torch.float64)
    kron = torch.kron(g, g).T.to(dtype=weight.dtype, device=weight.device)
    u = weight.detach().contiguous().view(-1, 9) @ kron
    return u.view(cout, cin, 3, 16).permute(2, 3, 0, 1).contiguous()  # row-major (Cout, Cin) per point


def _input_transform(xp: torch.Tensor, out: torch.Tensor) -> None:
    """B^T d B of every 4x4 tile (stride 2) of zero-padded frames, separably (rows, then columns).

    xp : (T, 2 nH + 2, 2 nW + 2, C) channels-last frames, padding included.
    out : (16, T, nH, nW, C) buffer, written in place.
    """
    h2, w2 = xp.shape[1] - 2, xp.shape[2] - 2
    rows = [xp[:, i : i + h2 : 2] for i in range(4)]  # (T, nH, Wp, C): row i of each tile
    # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    tmp = [rows[0] - rows[2], rows[1] + rows[2], rows[2] - rows[1], rows[1] - rows[3]]
    for a, r in enumerate(tmp):
        cols = [r[:, :, j : j + w2 : 2] for j in range(4)]
        torch.sub(cols[0], cols[2], out=out[4 * a])
        torch.add(cols[1], cols[2], out=out[4 * a + 1])
        torch.sub(cols[2], cols[1], out=out[4 * a + 2])
        torch.sub(cols[1], cols[3], out=out[4 * a + 3])


def _output_transform(m: list[torch.Tensor], out: torch.Tensor) -> None:
    """A^T M A of every tile into the interleaved output, separably.

    m : 16 products (T, nH, nW, C) (bias already in point (1, 1)).
    out : (T, H, W, C) channels-last output view, H <= 2 nH, W <= 2 nW.
    """
    h, w = out.shape[1], out.shape[2]
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]], over the first Winograd index then the second
    q0 = [m[b] + m[4 + b] + m[8 + b] for b in range(4)]
    q1 = [m[4 + b] - m[8 + b] - m[12 + b] for b in range(4)]
    for i, q in enumerate((q0, q1)):
        nh = (h - i + 1) // 2
        for j in range(2):
            nw = (w - j + 1) // 2
            y = q[0] + q[1] + q[2] if j == 0 else q[1] - q[2] - q[3]
            out[:, i::2, j::2].copy_(y[:, :nh, :nw])


class WinogradConv3d(nn.Module):
    """Inference stand-in for a bias-optional ``Conv3d(k=(3,3,3), stride=1, padding=1)``.

    Built from the convolution (after BatchNorm folding); the kernel transforms are computed once
    here. On CPU in float32/float64 without autocast it runs the Winograd path; anywhere else
    (CUDA, where cuDNN picks its own algorithms, or under autocast) it calls ``F.conv3d`` with the
    original weights, so the module is always a drop-in replacement.

    Output: channels-last-3d (B, Cout, T, H, W). ``chunk``: output frames per chunk (None: about
    :data:`ROWS_PER_PRODUCT` rows per matrix product).
    """

    def __init__(self, conv: nn.Conv3d, chunk: int | None = None):
        super().__init__()
        if not is_winograd_eligible(conv):
            raise ValueError(f"{type(self).__name__} needs a Conv3d with kernel 3x3x3, stride 1, padding 1, no groups/dilation")
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.chunk = chunk
        self._u = None  # transformed kernels, made on first use (not a buffer: derived data)

    def _apply(self, fn, recurse=True):
        self._u = None  # the weight may change device or dtype: transform it again when used
        return super()._apply(fn, recurse)

    @property
    def u(self) -> torch.Tensor:
        """Transformed kernels (3, 16, Cout, Cin), computed once per weight dtype/device."""
        w = self.weight
        if self._u is None or self._u.dtype != w.dtype or self._u.device != w.device:
            self._u = self._kernels(w)
        return self._u

    @staticmethod
    def _kernels(weight: torch.Tensor) -> torch.Tensor:
        return winograd_kernels(weight)

    def forward(self, x: torch.Tensor, valid_time: bool = False) -> torch.Tensor:
        """The convolution; ``valid_time``: without temporal padding (T - 2 output frames)."""
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled("cpu"):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.conv3d(x, self.weight.to(x.dtype), bias, 1, (0, 1, 1) if valid_time else 1)
        return self._fast(x, valid_time)

    def _fast(self, x: torch.Tensor, valid_time: bool) -> torch.Tensor:
        chunk = self.chunk or max(4, ROWS_PER_PRODUCT // (((x.shape[3] + 1) // 2) * ((x.shape[4] + 1) // 2)))
        return winograd_conv3d(x, self.u, self.bias, chunk, valid_time)


def is_winograd_eligible(conv: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv3d)
        and conv.kernel_size == (3, 3, 3)
        and conv.stride == (1, 1, 1)
        and conv.padding == (1, 1, 1)
        and conv.dilation == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _products(v: torch.Tensor, u: torch.Tensor, n: int, bias: torch.Tensor | None) -> list[torch.Tensor]:
    """The 16 Winograd-domain matrix products of one chunk, temporal taps summed.

    v : (16, n + 2, P, Cin) transformed frames (one halo frame each side); u : (3, 16, Cout, Cin).
    Returns 16 tensors (n P, Cout); ``bias`` is added to point (1, 1), which reaches all four
    outputs of a tile with weight +1.
    """
    rows = v.shape[2] * n
    out = []
    for k in range(16):
        taps = [v[k, tap : tap + n].reshape(rows, -1) for tap in range(3)]
        b = bias if k == 5 else None
        if _ONEDNN_LINEAR is not None and v.dtype == torch.float32:
            # oneDNN's fp32 GEMM: ~4x faster than torch.mm (MKL) on AMD CPUs; fused accumulation
            m = _ONEDNN_LINEAR(taps[0], u[0, k], b, "none", [], "")
            m = _ONEDNN_LINEAR.binary(taps[1], m, u[1, k], None, "add")
            m = _ONEDNN_LINEAR.binary(taps[2], m, u[2, k], None, "add")
        else:
            m = taps[0] @ u[0, k].T
            m.addmm_(taps[1], u[1, k].T).addmm_(taps[2], u[2, k].T)
            if b is not None:
                m += b
        out.append(m)
    return out


def _onednn_linear():
    try:
        op = torch.ops.mkldnn._linear_pointwise
        op.binary  # noqa: B018 - both overloads are needed
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_ONEDNN_LINEAR = _onednn_linear()


def winograd_conv3d(
    x: torch.Tensor,
    u: torch.Tensor,
    bias: torch.Tensor | None = None,
    chunk: int = DEFAULT_CHUNK,
    valid_time: bool = False,
):
    """Conv3d (3x3x3, stride 1, zero padding 1) of ``x`` (B, Cin, T, H, W) with the transformed
    kernels ``u`` (3, 16, Cout, Cin) from :func:`winograd_kernels`; returns (B, Cout, T, H, W) in
    channels-last-3d memory format.

    ``valid_time``: no temporal padding (spatial padding stays 1): T - 2 output frames, output j
    from input frames j .. j + 2 (what streaming over time needs, see
    :mod:`freehand3d.tracking.model.streaming`)."""
    bsz, cin, t, h, w = x.shape
    cout = u.shape[2]
    if u.shape[:2] != (3, 16) or u.shape[3] != cin:
        raise ValueError(f"kernels {tuple(u.shape)} do not fit an input of {cin} channels")
    nh, nw = (h + 1) // 2, (w + 1) // 2
    # output frames o_lo .. o_hi - 1 in input-frame numbering (frame o reads o - 1 .. o + 1)
    o_lo, o_hi = (1, t - 1) if valid_time else (0, t)
    if o_hi <= o_lo:
        return x.new_empty(bsz, max(o_hi - o_lo, 0), h, w, cout).permute(0, 4, 1, 2, 3)
    chunk = max(1, min(chunk, o_hi - o_lo))
    frames = x.permute(0, 2, 3, 4, 1)  # (B, T, H, W, C): a view when x is channels-last-3d
    out = x.new_empty(bsz, o_hi - o_lo, h, w, cout)
    pad = x.new_zeros(chunk + 2, 2 * nh + 2, 2 * nw + 2, cin)
    v = x.new_empty(16, chunk + 2, nh, nw, cin)
    u = u.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    for b in range(bsz):
        for lo in range(o_lo, o_hi, chunk):
            hi = min(lo + chunk, o_hi)
            n = hi - lo
            # frames lo-1 .. hi (one frame of halo each side); zeros beyond the clip's ends
            src_lo, src_hi = max(lo - 1, 0), min(hi + 1, t)
            first = src_lo - (lo - 1)
            if first:
                pad[0].zero_()
            pad[first : first + src_hi - src_lo, 1 : h + 1, 1 : w + 1] = frames[b, src_lo:src_hi]
            if first + src_hi - src_lo < n + 2:
                pad[first + src_hi - src_lo : n + 2].zero_()
            _input_transform(pad[: n + 2], v[:, : n + 2])
            m = _products(v[:, : n + 2].flatten(2, 3), u, n, bias)
            _output_transform([p.view(n, nh, nw, cout) for p in m], out[b, lo - o_lo : hi - o_lo])
    return out.permute(0, 4, 1, 2, 3)
