"""Fusion decoder (SPEC §6): local features attend to themselves (relative-key positions) and to
the global features (cross-attention), in post-LN layers; a linear head gives 6-DoF per frame."""

from __future__ import annotations

import torch
from torch import nn

from freehand3d.tracking.model.attention import PostNormLayer
from freehand3d.tracking.model.presets import DualTrackConfig


class FusionDecoder(nn.Module):
    """(B, N, D) local features + (B, M, D) global features -> (B, N, D)."""

    def __init__(self, cfg: DualTrackConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            PostNormLayer(
                cfg.feature_dim,
                cfg.fusion_heads,
                cfg.fusion_mlp,
                cfg.layer_norm_eps,
                max_positions=cfg.max_positions,
                cross_dim=cfg.feature_dim,
            )
            for _ in range(cfg.fusion_layers)
        )

    def forward(self, local_features: torch.Tensor, global_features: torch.Tensor) -> torch.Tensor:
        x = local_features
        for layer in self.layers:
            x = layer(x, global_features)
        return x
