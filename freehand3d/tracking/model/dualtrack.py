"""The DualTrack network (SPEC §2): local encoder + global encoder + fusion decoder + head."""

from __future__ import annotations

import torch
from torch import nn

from freehand3d.tracking.model.fusion import FusionDecoder
from freehand3d.tracking.model.global_ import GlobalEncoder
from freehand3d.tracking.model.local import LocalEncoder
from freehand3d.tracking.model.presets import DualTrackConfig, get_config


class DualTrack(nn.Module):
    """Sensorless freehand-ultrasound tracking network (Wu et al., DualTrack, 2025), pure torch.

    Parameters
    ----------
    preset : a name from :data:`~freehand3d.tracking.model.presets.PRESETS` or a
        :class:`DualTrackConfig`.

    Notes
    -----
    Call ``model(local, global_)`` with the two tensors from
    :func:`freehand3d.tracking.preprocess`. The output row i (0-based) is the motion of frame i+1
    relative to frame i: [tx, ty, tz] in mm and [rx, ry, rz] in degrees (extrinsic x-y-z), see
    :func:`freehand3d.tracking.compose_poses`. A freshly built model has random weights; use
    :func:`freehand3d.tracking.load_dualtrack` for trained ones. Models are returned in eval mode
    by the loader; BatchNorm then uses its running statistics.

    Examples
    --------
    >>> model = DualTrack("tiny").eval()
    >>> out = model(torch.zeros(1, 20, 1, 128, 128), torch.zeros(1, 20, 1, 112, 112))
    >>> out["head_output"].shape
    torch.Size([1, 19, 6])
    """

    def __init__(self, preset="dualtrack-2024"):
        super().__init__()
        cfg = get_config(preset)
        self.config = cfg
        self.local_encoder = LocalEncoder(cfg)
        self.global_encoder = GlobalEncoder(cfg)
        self.fusion = FusionDecoder(cfg)
        self.head = nn.Linear(cfg.feature_dim, 6)

    @property
    def preset(self) -> str:
        return self.config.name

    def global_indices(self, n_frames: int, device=None) -> torch.Tensor:
        """Sweep indices of the frames the global encoder sees: 0, s, 2s, ... below N."""
        return torch.arange(0, n_frames, self.config.global_stride, device=device)

    def check_length(self, n_frames: int) -> None:
        """Raise ValueError unless 2 <= N <= max_positions."""
        if n_frames < 2:
            raise ValueError(f"a sweep needs at least 2 frames to estimate motion, got {n_frames}")
        if n_frames > self.config.max_positions:
            raise ValueError(
                f"sweep of {n_frames} frames exceeds the {self.config.max_positions} frames the "
                f"{self.config.name} model supports"
            )

    def decode(self, local_features: torch.Tensor, global_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fusion decoder and head on precomputed features."""
        decoder_output = self.fusion(local_features, global_features)
        head_output = self.head(decoder_output)[:, 1:]  # frame 0 has no predecessor
        return {"decoder_output": decoder_output, "head_output": head_output}

    def forward(self, local: torch.Tensor, global_: torch.Tensor, return_features: bool = False):
        """Run the network on one preprocessed sweep.

        Parameters
        ----------
        local : (B, N, 1, 256, 256) local crops.
        global_ : (B, N, 1, 224, 224) global frames for the whole sweep (the frames at
            :meth:`global_indices` are used), or already only those M = ceil(N/16) frames.
        return_features : also return the intermediate features.

        Returns
        -------
        dict with ``head_output`` (B, N-1, 6) and, with ``return_features``, ``local_features``
        (B, N, D), ``global_features`` (B, M, D) and ``decoder_output`` (B, N, D); D = 512 for the
        official presets.
        """
        if local.ndim != 5 or global_.ndim != 5:
            raise ValueError(
                f"inputs must be (B, N, 1, H, W); got local {tuple(local.shape)}, global {tuple(global_.shape)}"
            )
        n = local.shape[1]
        self.check_length(n)
        indices = self.global_indices(n, device=local.device)
        if global_.shape[1] == n:
            global_ = global_[:, indices]
        elif global_.shape[1] != len(indices):
            raise ValueError(f"global input has {global_.shape[1]} frames; expected {n} or {len(indices)}")
        local_features = self.local_encoder(local)
        global_features = self.global_encoder(global_, indices)
        out = self.decode(local_features, global_features)
        if not return_features:
            return {"head_output": out["head_output"]}
        return {"local_features": local_features, "global_features": global_features, **out}
