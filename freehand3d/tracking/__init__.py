"""Sensorless freehand tracking with DualTrack (pure-torch re-implementation).

Public API: :class:`DualTrack` (the network), :data:`PRESETS`, :func:`load_dualtrack` /
:func:`save_checkpoint` (official and own checkpoints), :func:`preprocess` (frames -> model
inputs), :func:`compose_poses` (relative 6-DoF -> absolute 4x4) and :func:`track` (sweep ->
sweep with predicted ``ImageToReference``). Importing this package imports torch; the CLI imports
it inside its commands only.
"""

from __future__ import annotations

from freehand3d.tracking.checkpoint import load_dualtrack, save_checkpoint
from freehand3d.tracking.infer import compose_poses, predict, track
from freehand3d.tracking.model.dualtrack import DualTrack
from freehand3d.tracking.model.presets import PRESETS, DualTrackConfig
# the function shadows the submodule of the same name on purpose (the public name is the function)
from freehand3d.tracking.preprocess import preprocess

__all__ = [
    "DualTrack",
    "DualTrackConfig",
    "PRESETS",
    "compose_poses",
    "load_dualtrack",
    "predict",
    "preprocess",
    "save_checkpoint",
    "track",
]
