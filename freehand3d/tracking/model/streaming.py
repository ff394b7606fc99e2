"""Run the local 3-D CNN over time in pieces, exactly, with memory bounded by the piece size.

Every temporal convolution of the local ResNet (the stem's (k,1,1) conv and the (k,3,3) block
convs, k = 3) only needs the k - 1 input frames before the ones it is given. :class:`StreamingCNN`
keeps those frames (the *carry*) per convolution, runs each conv without temporal padding on
``carry + new frames``, and supplies the zero frames of the padding itself at the start and, when
told the stream ends, at the end. Each temporal conv thus delays its output by one frame; the
residual of a block is queued until the block's two convs have produced the matching frames.

Compared with halo tiling (:meth:`LocalEncoder.frame_tokens`), nothing is computed twice (tiles of
128 frames with a 17-frame halo on each side cost 1.27x the work) and the activations held at once
are those of one piece (default :data:`DEFAULT_PIECE` frames) plus two frames per conv, whatever
the sweep's length. Every output frame sums exactly the same products as the unchunked conv, so
the result equals the one-piece forward up to the summation order inside oneDNN's kernels.

The same object serves live tracking (:mod:`freehand3d.tracking.live`): push the newest frames as
they arrive; :meth:`StreamingCNN.peek` computes what the end-of-stream flush would give *now*
(frames not yet final because later frames are still to come) without changing the state, and
:meth:`StreamingCNN.fork` takes a copy of the state that another thread can flush while this one
keeps pushing (state tensors are replaced, never modified in place, so the copy shares them).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

#: frames per piece when streaming a whole sweep. The work does not depend on it (no halo), only
#: the size of each oneDNN call; 16 keeps the activations of the 2024 layout under ~0.6 GB (32:
#: a 1030-frame run peaked at 2.8 GB RSS before the in-place ReLUs, see docs/tracking.md)
DEFAULT_PIECE = 16


def _conv_valid(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv`` with no temporal padding (its spatial padding kept)."""
    from freehand3d.tracking.model.winograd import WinogradConv3d

    if isinstance(conv, WinogradConv3d):  # F(2x2) and its F(4x4) subclass
        return conv(x, valid_time=True)
    pad = (0,) + tuple(conv.padding[1:])
    weight = conv.weight if conv.weight.dtype == x.dtype else conv.weight.to(x.dtype)
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32:
        # F.conv3d sends small inputs (batch 1 and N*C*T*H under 20480: the tiny model, and every
        # one-frame live step of it) to ATen's im2col fallback, measured 3-34x slower than oneDNN
        # on the tiny layers (1 thread, AMD EPYC AVX2: 8 ch at 64x64, 18 frames: 130 vs 3.8 ms);
        # larger convs already take oneDNN, so this only changes the small ones
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, list(pad), list(conv.stride),
                                                 list(conv.dilation), conv.groups)
    return F.conv3d(x, weight, bias, conv.stride, pad, conv.dilation, conv.groups)


#: oneDNN convolutions available (CPU builds of torch have them)
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


def _kt(conv: nn.Module) -> int:
    return int(conv.weight.shape[2])


def _frames(x: torch.Tensor, lo: int, hi: int | None = None) -> torch.Tensor:
    return x[:, :, lo:hi]


def _tail(x: torch.Tensor, lo: int) -> torch.Tensor:
    """Frames lo.. of x to keep as state: a copy when it frees most of x (long pieces), else a view
    (a live step of one frame keeps 3 frames alive instead of 2 and saves a copy per conv). Never
    modified in place either way."""
    tail = x[:, :, lo:]
    return tail.clone() if 2 * tail.shape[2] < x.shape[2] else tail


class _TemporalConv:
    """One conv with its carry. ``__call__(x, final)`` -> the output frames that are now complete."""

    def __init__(self, conv: nn.Module):
        self.conv = conv
        self.kt = _kt(conv)
        self.pad = self.kt // 2
        self.carry: torch.Tensor | None = None
        self.started = False

    def reset(self):
        self.carry, self.started = None, False

    def state(self):
        return (self.carry, self.started)

    def restore(self, state):
        self.carry, self.started = state

    def fork(self) -> "_TemporalConv":
        return copy.copy(self)

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        if self.kt == 1:
            return self._run(x)
        parts = []
        if not self.started:
            parts.append(_zeros(x, self.pad))
            self.started = True
        elif self.carry is not None:
            parts.append(self.carry)
        parts.append(x)
        if final:
            parts.append(_zeros(x, self.pad))
        inp = torch.cat(parts, dim=2) if len(parts) > 1 else x
        # in the conv's layout before the carry is taken: the carry keeps it, so the next cat
        # (which takes its first input's layout) needs no conversion (measured: 14 layout copies
        # of up to 0.4 ms per one-frame live step before)
        inp = inp.contiguous(memory_format=_format(x))
        keep = self.kt - 1
        self.carry = _tail(inp, max(inp.shape[2] - keep, 0))
        if inp.shape[2] < self.kt:
            return self._empty(inp)
        return _conv_valid(self.conv, inp)

    def _run(self, x):
        if x.shape[2] == 0:
            return self._empty(x)
        return _conv_valid(self.conv, x)

    def _empty(self, x):
        # shape of zero output frames: run the conv on one zero frame (cheap) and take none of it
        probe = x.new_zeros(*x.shape[:2], self.kt, *x.shape[3:])
        return _frames(_conv_valid(self.conv, probe), 0, 0)


def _zeros(x: torch.Tensor, n: int) -> torch.Tensor:
    """n zero frames shaped and laid out like x: the concatenation with x then keeps x's memory
    format (a channels-last x with contiguous zero frames made torch.cat return the plain layout,
    and every conv of a one-piece sweep paid a transposing copy, 2.3 of 11 CPU-s on 16 frames)."""
    return torch.empty((*x.shape[:2], n, *x.shape[3:]), dtype=x.dtype, device=x.device,
                       memory_format=_format(x)).zero_()


def _format(x: torch.Tensor):
    return torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous() \
        else torch.contiguous_format


class _Block:
    def __init__(self, block):
        self.conv1 = _TemporalConv(block.conv1)
        self.conv2 = _TemporalConv(block.conv2)
        self.down = None if block.downsample is None else _TemporalConv(block.downsample)
        self.queue: tuple[torch.Tensor, ...] = ()

    def convs(self):
        return [c for c in (self.conv1, self.conv2, self.down) if c is not None]

    def reset(self):
        for c in self.convs():
            c.reset()
        self.queue = ()

    def state(self):
        return ([c.state() for c in self.convs()], self.queue)

    def restore(self, state):
        for c, s in zip(self.convs(), state[0]):
            c.restore(s)
        self.queue = state[1]

    def fork(self) -> "_Block":
        twin = copy.copy(self)
        twin.conv1, twin.conv2 = self.conv1.fork(), self.conv2.fork()
        twin.down = None if self.down is None else self.down.fork()
        return twin

    def __call__(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        residual = x if self.down is None else self.down(x, final)
        # the queue is a tuple of the residual pieces still waiting, not their concatenation: a
        # torch.cat copied the whole piece while the piece itself was still alive (75 MB at the
        # 2024 layout's layer1 with 16-frame pieces, at the forward's memory peak)
        queue = self.queue + (residual,)
        # conv outputs are fresh tensors: ReLU and the residual add run in place (one map less alive)
        out = self.conv2(self.conv1(x, final).relu_(), final)
        n = out.shape[2]
        done, rest = 0, []
        for part in queue:  # add the first n queued frames in order, keep the rest
            take = min(part.shape[2], n - done)
            if take > 0:
                out[:, :, done : done + take].add_(_frames(part, 0, take))
                done += take
            if take < part.shape[2]:
                rest.append(_tail(part, max(take, 0)))
        self.queue = tuple(rest)
        return out.relu_()


class StreamingCNN:
    """Stateful temporal streaming of a (BatchNorm-folded) :class:`VideoResNet18`.

    ``push(x, final=False)``: x (B, 1, T, S, S) new frames -> the CNN maps (B, C, T', g, g) of the
    frames that became complete (T' = T - delay on the first push, T on later ones, T + delay on
    the final push: over a whole stream exactly one map per input frame, in order).
    """

    def __init__(self, cnn: nn.Module):
        stem = cnn.stem
        self.spatial = _TemporalConv(stem[0])
        self.temporal = _TemporalConv(stem[3])
        self.blocks = [_Block(block) for layer in cnn.layers for block in layer]
        self.delay = (self.temporal.kt // 2) + sum(c.conv1.kt // 2 + c.conv2.kt // 2 for c in self.blocks)
        self.pushed = 0
        self.emitted = 0

    def reset(self):
        self.spatial.reset()
        self.temporal.reset()
        for b in self.blocks:
            b.reset()
        self.pushed = self.emitted = 0

    def _state(self):
        return (self.temporal.state(), [b.state() for b in self.blocks], self.pushed, self.emitted)

    def _restore(self, state):
        self.temporal.restore(state[0])
        for b, s in zip(self.blocks, state[1]):
            b.restore(s)
        self.pushed, self.emitted = state[2], state[3]

    def push(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        y = self.spatial(x, final).relu_()
        y = self.temporal(y, final).relu_()
        for block in self.blocks:
            y = block(y, final)
        self.pushed += x.shape[2]
        self.emitted += y.shape[2]
        return y

    def fork(self) -> "StreamingCNN":
        """An independent copy of the stream's state (sharing the CNN and the state tensors, which
        are replaced, never modified in place): pushing to or flushing the copy leaves this one as it
        is, also while another thread pushes to this one. Cheap (no tensor is copied)."""
        twin = copy.copy(self)
        twin.spatial, twin.temporal = self.spatial.fork(), self.temporal.fork()
        twin.blocks = [b.fork() for b in self.blocks]
        return twin

    def peek(self, like: torch.Tensor) -> torch.Tensor:
        """Maps of the frames still pending, as if the stream ended now (state unchanged).
        ``like``: any input-shaped tensor (B, 1, T, S, S) giving shape, dtype and device."""
        return self.fork().push(_frames(like, 0, 0), final=True)


def stream_cnn(cnn: nn.Module) -> StreamingCNN:
    """A :class:`StreamingCNN` over ``cnn`` (which is not modified; state lives in the wrapper)."""
    return StreamingCNN(cnn)


__all__ = ["StreamingCNN", "stream_cnn", "DEFAULT_PIECE"]
