"""The ResNet-18 backbones of DualTrack (SPEC §3.1, §4).

* :class:`VideoResNet18` (local branch): 3-D convolutions over (time, height, width). Stem = a
  spatial (1,7,7) stride-(1,2,2) conv then a temporal (k,1,1) conv; every BasicBlock conv is
  (k,3,3). No max-pool and no temporal stride, so a 256x256 crop gives a 16x16 map per frame.
* :class:`FrameResNet18` (global branch): the same layout with every kernel depth 1, written with
  2-D convolutions on each frame (the official Conv3d weights are squeezed when loading).

All convs are bias-free and followed by BatchNorm (eval mode uses the running statistics).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class _BasicBlock(nn.Module):
    def __init__(self, conv, norm, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = conv(in_ch, out_ch, stride)
        self.bn1 = norm(out_ch)
        self.conv2 = conv(out_ch, out_ch, 1)
        self.bn2 = norm(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(conv(in_ch, out_ch, stride, pointwise=True), norm(out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class _ResNet18(nn.Module):
    """Shared layout; subclasses choose the convolution type."""

    def __init__(self, stem_width: int, widths, eps: float):
        super().__init__()
        norm = self._norm(eps)
        self.stem = nn.Sequential(
            self._stem_spatial(stem_width),
            norm(stem_width),
            nn.ReLU(inplace=True),
            self._stem_second(stem_width, widths[0]),
            norm(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers = []
        in_ch = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(
                    _BasicBlock(self._block_conv, norm, in_ch, width, stride),
                    _BasicBlock(self._block_conv, norm, width, width, 1),
                )
            )
            in_ch = width
        self.layers = nn.ModuleList(layers)
        self.out_channels = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def fused_for_inference(self, winograd_min_channels: int | None = None) -> "_ResNet18":
        """A copy with every BatchNorm folded into the preceding conv (eval-mode statistics), so
        inference skips one pass over each activation map. Same function up to rounding.

        ``winograd_min_channels``: also replace the stride-1 3x3x3 block convs with at least that
        many input channels by :class:`~freehand3d.tracking.model.winograd.WinogradConv3d`
        (2.25x fewer multiply-adds on CPU; None: keep every conv).
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        from freehand3d.tracking.model.winograd import WinogradConv3d, is_winograd_eligible

        def fast(conv):
            if winograd_min_channels is None or not is_winograd_eligible(conv):
                return conv
            return WinogradConv3d(conv) if conv.in_channels >= winograd_min_channels else conv

        fused = copy.deepcopy(self).eval()
        fused.stem[0] = fuse_conv_bn_eval(fused.stem[0], fused.stem[1])
        fused.stem[3] = fuse_conv_bn_eval(fused.stem[3], fused.stem[4])
        fused.stem[1] = fused.stem[4] = nn.Identity()
        for layer in fused.layers:
            for block in layer:
                block.conv1, block.bn1 = fast(fuse_conv_bn_eval(block.conv1, block.bn1)), nn.Identity()
                block.conv2, block.bn2 = fast(fuse_conv_bn_eval(block.conv2, block.bn2)), nn.Identity()
                if block.downsample is not None:
                    block.downsample = fuse_conv_bn_eval(block.downsample[0], block.downsample[1])
        return fused


class VideoResNet18(_ResNet18):
    """3-D ResNet-18 of the local branch: (B, 1, N, H, W) -> (B, C, N, H/16, W/16).

    Temporal padding is zeros at both ends of the input, so the output near the ends of a clip
    depends on where the clip was cut (this is what makes the 2025 chunking rule matter).
    """

    def __init__(self, stem_width: int, widths, temporal_kernel: int = 3, eps: float = 1e-5):
        self.temporal_kernel = temporal_kernel
        super().__init__(stem_width, widths, eps)

    @staticmethod
    def _norm(eps):
        return lambda ch: nn.BatchNorm3d(ch, eps=eps)

    def _stem_spatial(self, out_ch):
        return nn.Conv3d(1, out_ch, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False)

    def _stem_second(self, in_ch, out_ch):
        kt = self.temporal_kernel
        return nn.Conv3d(in_ch, out_ch, (kt, 1, 1), padding=(kt // 2, 0, 0), bias=False)

    def _block_conv(self, in_ch, out_ch, stride, pointwise=False):
        if pointwise:
            return nn.Conv3d(in_ch, out_ch, 1, stride=(1, stride, stride), bias=False)
        kt = self.temporal_kernel
        return nn.Conv3d(in_ch, out_ch, (kt, 3, 3), stride=(1, stride, stride), padding=(kt // 2, 1, 1), bias=False)


class FrameResNet18(_ResNet18):
    """Per-frame 2-D ResNet-18 of the global branch: (B, 1, H, W) -> (B, C, H/16, W/16)."""

    @staticmethod
    def _norm(eps):
        return lambda ch: nn.BatchNorm2d(ch, eps=eps)

    def _stem_spatial(self, out_ch):
        return nn.Conv2d(1, out_ch, 7, stride=2, padding=3, bias=False)

    def _stem_second(self, in_ch, out_ch):
        return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)

    def _block_conv(self, in_ch, out_ch, stride, pointwise=False):
        if pointwise:
            return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
        return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
