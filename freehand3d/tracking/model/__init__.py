"""DualTrack network modules (pure torch)."""

from freehand3d.tracking.model.dualtrack import DualTrack
from freehand3d.tracking.model.presets import PRESETS, DualTrackConfig, get_config

__all__ = ["DualTrack", "DualTrackConfig", "PRESETS", "get_config"]
