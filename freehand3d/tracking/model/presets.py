"""Architecture sizes of the DualTrack presets.

A :class:`DualTrackConfig` holds every size the network needs; :data:`PRESETS` names the three
shipped ones. ``dualtrack-2024`` and ``dualtrack-tusrec2025`` match the official checkpoints
(``dualtrack_final.pt`` and ``dualtrack_ft_tus_rec_2025_v3_best.pt``); ``tiny`` keeps the same
structure with small widths and smaller inputs (128 px local crops -> 8x8 CNN maps, 112 px global
frames) so it trains on a CPU and ships as a checkpoint of a few MB
(``freehand3d/data/dualtrack-tiny.pt`` is this architecture).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DualTrackConfig:
    """Sizes and switches of a DualTrack network.

    Attributes
    ----------
    name : preset name (informative; stored in checkpoints).
    feature_dim : width of local features, global features and the fusion decoder.
    max_positions : P, the longest sweep (frames) the position tables cover; relative-position
        tables have 2P-1 rows and the global frame-index table P rows.
    local_stem_width, local_widths : channels of the local 3-D ResNet-18 (stem middle width, then
        layer1..layer4).
    local_temporal_kernel : temporal kernel of the local CNN (3 = the full 3x3x3 variant).
    pool_dim, pool_heads, pool_mlp, pool_layers : spatial ViT pooling (pre-LN) sizes.
    pool_grid : side of the CNN feature map the ViT expects (16 for 256x256 crops).
    pool_patch : ViT patch size on that map.
    temporal_layers, temporal_heads, temporal_mlp : local temporal transformer (width = pool_dim).
    global_stem_width, global_widths : channels of the per-frame global ResNet-18.
    global_layers, global_heads, global_mlp : global transformer sizes.
    fusion_layers, fusion_heads, fusion_mlp : fusion decoder sizes.
    global_stride : every ``global_stride``-th frame (0, s, 2s, ...) feeds the global encoder.
    cnn_chunk_threshold : when set and N exceeds it, the local CNN runs on ``N // threshold + 1``
        separate chunks (torch.chunk split, zero padding at every chunk border), as the 2025 model
        does. None: never chunk (2024 model).
    local_size, global_size : input crop / resize sizes (pixels, square).
    global_variant, global_norm : default global preprocessing (see
        :func:`freehand3d.tracking.preprocess`).
    layer_norm_eps, batch_norm_eps : normalisation epsilons.
    """

    name: str = "custom"
    feature_dim: int = 512
    max_positions: int = 1024
    local_stem_width: int = 45
    local_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    local_temporal_kernel: int = 3
    pool_dim: int = 64
    pool_heads: int = 4
    pool_mlp: int = 32
    pool_layers: int = 4
    pool_grid: int = 16
    pool_patch: int = 2
    temporal_layers: int = 4
    temporal_heads: int = 4
    temporal_mlp: int = 32
    global_stem_width: int = 45
    global_widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    global_layers: int = 8
    global_heads: int = 8
    global_mlp: int = 1024
    fusion_layers: int = 12
    fusion_heads: int = 8
    fusion_mlp: int = 1024
    global_stride: int = 16
    cnn_chunk_threshold: int | None = None
    local_size: int = 256
    global_size: int = 224
    global_variant: str = "B"
    global_norm: tuple[float, float] = (0.0, 1.0)
    layer_norm_eps: float = 1e-12
    batch_norm_eps: float = 1e-5

    def replace(self, **changes) -> "DualTrackConfig":
        """A copy with some fields changed (e.g. a smaller test network)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-Python dict (lists instead of tuples) for checkpoints."""
        out = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, values: dict) -> "DualTrackConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(known)
        if unknown:
            raise ValueError(f"unknown DualTrack config fields {sorted(unknown)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    @property
    def temporal_halo(self) -> int:
        """Frames on each side that influence one output frame of the local CNN: the stem's
        temporal conv plus two temporal convs per BasicBlock (2 blocks x 4 layers)."""
        per_conv = (self.local_temporal_kernel - 1) // 2
        return per_conv * (1 + 2 * 2 * len(self.local_widths))

    def n_global(self, n_frames: int) -> int:
        """M = ceil(N / global_stride), the number of frames the global encoder sees."""
        return -(-n_frames // self.global_stride)


#: The shipped presets. The official two differ only in P (1024 vs 4096) and in the local-CNN
#: chunking of long sweeps; their default global preprocessing is the one of their evaluation
#: configs (2024: variant B; 2025 challenge predictor: variant C).
PRESETS: dict[str, DualTrackConfig] = {
    "dualtrack-2024": DualTrackConfig(name="dualtrack-2024"),
    "dualtrack-tusrec2025": DualTrackConfig(
        name="dualtrack-tusrec2025", max_positions=4096, cnn_chunk_threshold=1024, global_variant="C"
    ),
    "tiny": DualTrackConfig(
        name="tiny",
        feature_dim=64,
        local_stem_width=8,
        local_widths=(8, 16, 32, 64),
        pool_dim=32,
        pool_heads=2,
        pool_mlp=32,
        pool_layers=1,
        temporal_layers=2,
        temporal_heads=2,
        temporal_mlp=64,
        global_stem_width=8,
        global_widths=(8, 16, 32, 64),
        global_layers=2,
        global_heads=2,
        global_mlp=128,
        fusion_layers=2,
        fusion_heads=2,
        fusion_mlp=128,
        # the shipped checkpoint's input sizes (benchmarks/train_tiny.py): 4x fewer CNN FLOPs
        local_size=128,
        pool_grid=8,
        global_size=112,
    ),
}


def get_config(preset) -> DualTrackConfig:
    """Resolve a preset name (or pass a :class:`DualTrackConfig` through)."""
    if isinstance(preset, DualTrackConfig):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown DualTrack preset {preset!r}; choose one of {sorted(PRESETS)}") from None
