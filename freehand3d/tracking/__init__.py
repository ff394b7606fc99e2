"""Sensorless freehand tracking with DualTrack (pure-torch re-implementation).

Public API: :class:`DualTrack` (the network), :data:`PRESETS`, :func:`load_dualtrack` /
:func:`save_checkpoint` (official and own checkpoints), :func:`preprocess` (frames -> model
inputs), :func:`compose_poses` (relative 6-DoF -> absolute 4x4) and :func:`track` (sweep ->
sweep with predicted ``ImageToReference``). Heavy modules load lazily so importing the package
stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DualTrack": "freehand3d.tracking.model.dualtrack",
    "DualTrackConfig": "freehand3d.tracking.model.presets",
    "PRESETS": "freehand3d.tracking.model.presets",
    "load_dualtrack": "freehand3d.tracking.checkpoint",
    "save_checkpoint": "freehand3d.tracking.checkpoint",
    "preprocess": "freehand3d.tracking.preprocess",
    "compose_poses": "freehand3d.tracking.infer",
    "track": "freehand3d.tracking.infer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'freehand3d.tracking' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
