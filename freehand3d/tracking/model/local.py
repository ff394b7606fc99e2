"""Local encoder (SPEC §3): 3-D CNN -> spatial ViT pooling -> temporal transformer -> projection.

The CNN is the memory hog (a 256x256 crop is still 64x128x128 per frame after the stem), so it is
run in temporal tiles with a halo of :attr:`DualTrackConfig.temporal_halo` frames on each side:
every output frame then sees exactly the input frames it sees in one unchunked run, and the tiled
result equals the untiled one (up to floating-point summation order inside the convolution). The
2025 chunking rule (SPEC §3.2) is a different thing -- chunks there are cut *without* halo, which
changes the result -- and is applied first; tiles never cross a chunk border.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from freehand3d.tracking.model.attention import PostNormLayer, PreNormLayer
from freehand3d.tracking.model.presets import DualTrackConfig
from freehand3d.tracking.model.resnet import VideoResNet18

#: Default number of output frames per CNN tile. Memory grows with (tile + 2 * halo) frames of
#: activations (~25 MB per frame and feature map at 64 x 128 x 128 float32), compute with
#: (tile + 2 * halo) / tile: 128 costs at most 1.27x the untiled work and a few GB on a CPU.
DEFAULT_CNN_TILE = 128


def cnn_chunks(n_frames: int, threshold: int | None) -> list[tuple[int, int]]:
    """Frame ranges the local CNN runs on separately (SPEC §3.2).

    With a threshold and ``N > threshold`` the sweep is split like ``torch.chunk(x, N // threshold
    + 1)``: chunks of ``ceil(N / k)`` frames, the last one shorter (and possibly fewer than k
    chunks). Otherwise the whole sweep is one chunk.

    >>> cnn_chunks(1030, 1024), cnn_chunks(2049, 1024)[-1]
    ([(0, 515), (515, 1030)], (1366, 2049))
    """
    if threshold is None or n_frames <= threshold:
        return [(0, n_frames)]
    k = n_frames // threshold + 1
    size = -(-n_frames // k)
    return [(start, min(start + size, n_frames)) for start in range(0, n_frames, size)]


class SpatialPooling(nn.Module):
    """ViT pooling of one frame's CNN map to a single token (the CLS output), SPEC §3.3."""

    def __init__(self, cfg: DualTrackConfig, in_channels: int):
        super().__init__()
        self.grid = cfg.pool_grid
        n_tokens = (cfg.pool_grid // cfg.pool_patch) ** 2 + 1
        self.patch = nn.Conv2d(in_channels, cfg.pool_dim, cfg.pool_patch, stride=cfg.pool_patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.pool_dim))
        self.position = nn.Parameter(torch.zeros(1, n_tokens, cfg.pool_dim))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.position, std=0.02)
        self.layers = nn.ModuleList(
            PreNormLayer(cfg.pool_dim, cfg.pool_heads, cfg.pool_mlp, cfg.layer_norm_eps) for _ in range(cfg.pool_layers)
        )
        self.norm = nn.LayerNorm(cfg.pool_dim, eps=cfg.layer_norm_eps)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """(F, C, g, g) feature maps -> (F, pool_dim) tokens."""
        if maps.shape[-2:] != (self.grid, self.grid):
            raise ValueError(
                f"the spatial pooling needs {self.grid}x{self.grid} CNN maps (crops of {self.grid * 16} px), "
                f"got {tuple(maps.shape[-2:])}"
            )
        tokens = self.patch(maps).flatten(2).transpose(1, 2)  # row-major patch order
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1) + self.position.to(tokens.dtype)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)[:, 0]


class TemporalTransformer(nn.Module):
    """Post-LN transformer with relative-key positions over the per-frame tokens (SPEC §3.4)."""

    def __init__(self, cfg: DualTrackConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            PostNormLayer(cfg.pool_dim, cfg.temporal_heads, cfg.temporal_mlp, cfg.layer_norm_eps, cfg.max_positions)
            for _ in range(cfg.temporal_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class LocalEncoder(nn.Module):
    """Frames (B, N, 1, S, S) crops -> local features (B, N, feature_dim).

    ``token_head`` and ``pose_head`` are the 6-DoF heads used when the encoder is trained alone
    (upstream keeps them in the checkpoint); the full model does not use them.
    """

    def __init__(self, cfg: DualTrackConfig):
        super().__init__()
        self.cfg = cfg
        self.cnn = VideoResNet18(cfg.local_stem_width, cfg.local_widths, cfg.local_temporal_kernel, cfg.batch_norm_eps)
        self.pool = SpatialPooling(cfg, self.cnn.out_channels)
        self.token_head = nn.Linear(cfg.pool_dim, 6)
        self.temporal = TemporalTransformer(cfg)
        self.pose_head = nn.Linear(cfg.pool_dim, 6)
        self.proj = nn.Linear(cfg.pool_dim, cfg.feature_dim, bias=False)
        self.cnn_tile = DEFAULT_CNN_TILE

    def _cnn_tokens(self, clip: torch.Tensor, cnn: nn.Module | None = None) -> torch.Tensor:
        """(B, T, 1, S, S) -> (B, T, pool_dim): CNN on the clip as one piece, then pooling."""
        b, t = clip.shape[:2]
        x = clip.transpose(1, 2)  # (B, 1, T, S, S)
        maps = (self.cnn if cnn is None else cnn)(x)  # (B, C, T, g, g)
        maps = maps.transpose(1, 2).reshape(b * t, *maps.shape[1:2], *maps.shape[3:])
        return self.pool(maps).view(b, t, -1)

    def frame_tokens(
        self,
        get_clip: Callable[[int, int], torch.Tensor],
        n_frames: int,
        tile: int | None = None,
        progress=None,
        cnn: nn.Module | None = None,
    ) -> torch.Tensor:
        """Per-frame tokens (B, N, pool_dim) with the chunking rule and halo tiling applied.

        Parameters
        ----------
        get_clip : ``get_clip(lo, hi)`` returns the preprocessed crops of frames lo..hi-1 as
            (B, hi - lo, 1, S, S); called once per tile, so the whole sweep never needs to be in
            memory as float crops.
        n_frames : N.
        tile : output frames per CNN run (default :attr:`cnn_tile`); 0 or None-with-large-N
            behaves the same as long as memory allows. The result does not depend on it.
        progress : optional callable ``progress(frames_done)``.
        cnn : a stand-in for :attr:`cnn` with the same function (e.g. its BatchNorm-folded copy).
        """
        tile = self.cnn_tile if tile is None else tile
        halo = self.cfg.temporal_halo
        pieces = []
        for chunk_lo, chunk_hi in cnn_chunks(n_frames, self.cfg.cnn_chunk_threshold):
            step = chunk_hi - chunk_lo if not tile or tile <= 0 else tile
            for lo in range(chunk_lo, chunk_hi, step):
                hi = min(lo + step, chunk_hi)
                # the halo comes from this chunk only: chunk borders are zero-padded (SPEC §3.2)
                read_lo, read_hi = max(chunk_lo, lo - halo), min(chunk_hi, hi + halo)
                tokens = self._cnn_tokens(get_clip(read_lo, read_hi), cnn)
                pieces.append(tokens[:, lo - read_lo : hi - read_lo])
                if progress is not None:
                    progress(hi)
        return torch.cat(pieces, dim=1)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Temporal transformer and projection: (B, N, pool_dim) -> (B, N, feature_dim)."""
        return self.proj(self.temporal(tokens))

    def forward(self, crops: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """(B, N, 1, S, S) -> (B, N, feature_dim)."""
        if crops.ndim != 5 or crops.shape[2] != 1:
            raise ValueError(f"local input must be (B, N, 1, S, S), got {tuple(crops.shape)}")
        tokens = self.frame_tokens(lambda lo, hi: crops[:, lo:hi], crops.shape[1], tile)
        return self.encode_tokens(tokens)
