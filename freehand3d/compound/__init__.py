"""Freehand volume reconstruction (compounding) into SimpleITK images.

* :class:`Reconstructor` — incremental: ``add_frame(frame, image_to_reference)``, ``volume()``;
* :func:`reconstruct` — a whole :class:`~freehand3d.sweep.Sweep` (optionally with a PLUS
  device-set configuration) in one call;
* :class:`OutputGrid`, :func:`grid_from_frames` — the output grid (PLUS's extent rule);
* :func:`fill_holes` — PLUS's hole-filling kernels and a distance-limited gap fill;
* :func:`frame_mask` — PLUS's clip rectangle and fan mask.
"""

from freehand3d.compound.holes import GapFill, fill_holes, parse_fill_spec
from freehand3d.compound.masks import frame_mask, mask_from_config
from freehand3d.compound.volume import OutputGrid, Reconstructor, check_memory, grid_from_frames

__all__ = [
    "reconstruct",
    "Reconstructor",
    "OutputGrid",
    "grid_from_frames",
    "check_memory",
    "fill_holes",
    "parse_fill_spec",
    "GapFill",
    "frame_mask",
    "mask_from_config",
]


def __getattr__(name):
    # reconstruct pulls in the sweep/IO layer; import it on first use
    if name == "reconstruct":
        from freehand3d.compound.volume import reconstruct

        return reconstruct
    raise AttributeError(name)
