"""Global encoder (SPEC §4): a sparse set of frames (every 16th) -> context tokens.

Per frame: 2-D ResNet-18, spatial mean, linear projection, plus a learned embedding of the frame's
*index in the sweep* (0, 16, 32, ...); then a post-LN transformer without positional terms.
"""

from __future__ import annotations

import torch
from torch import nn

from freehand3d.tracking.model.attention import PostNormLayer
from freehand3d.tracking.model.presets import DualTrackConfig
from freehand3d.tracking.model.resnet import FrameResNet18


class GlobalEncoder(nn.Module):
    """(B, M, 1, S, S) frames + their sweep indices (M,) -> (B, M, feature_dim).

    ``pose_head`` is the 6-DoF head used when the encoder is trained alone; unused here.
    """

    def __init__(self, cfg: DualTrackConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = FrameResNet18(cfg.global_stem_width, cfg.global_widths, cfg.batch_norm_eps)
        self.proj = nn.Linear(self.cnn.out_channels, cfg.feature_dim)
        self.frame_position = nn.Embedding(cfg.max_positions, cfg.feature_dim)
        self.layers = nn.ModuleList(
            PostNormLayer(cfg.feature_dim, cfg.global_heads, cfg.global_mlp, cfg.layer_norm_eps)
            for _ in range(cfg.global_layers)
        )
        self.pose_head = nn.Linear(cfg.feature_dim, 6)

    def frame_features(self, frames: torch.Tensor, cnn: nn.Module | None = None) -> torch.Tensor:
        """(B, M, 1, S, S) -> (B, M, C): CNN (or a stand-in with the same function, such as its
        BatchNorm-folded copy) then spatial mean (before projection)."""
        b, m = frames.shape[:2]
        maps = (self.cnn if cnn is None else cnn)(frames.reshape(b * m, *frames.shape[2:]))
        return maps.mean(dim=(2, 3)).view(b, m, -1)

    def encode_features(self, features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Projection, frame-index embedding and transformer: (B, M, C) -> (B, M, feature_dim)."""
        if int(indices.max()) >= self.cfg.max_positions:
            raise ValueError(f"frame index {int(indices.max())} exceeds the {self.cfg.max_positions} positions of the model")
        x = self.proj(features) + self.frame_position(indices).to(features.dtype)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, frames: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.encode_features(self.frame_features(frames), indices)
