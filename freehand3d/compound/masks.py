"""Which pixels of a frame are pasted into the volume: PLUS's clip rectangle and fan mask.

The rules follow PLUS's slice paster (``vtkIGSIOPasteSliceIntoVolume``) so that the same
configuration selects the same pixels:

* clip rectangle: columns ``ceil(ox) .. floor(ox + width)`` and rows ``ceil(oy) .. floor(oy + height)``
  *inclusive* (PLUS's clip extent includes the pixel at origin + size), limited to the frame;
  without a rectangle the whole frame is used;
* fan (used when either fan angle is non-zero): for each row at ``dy = row - fan_origin_y`` pixels
  below the fan origin, the columns strictly between the two fan lines
  ``fan_origin_x + tan(angle) * dy`` with one pixel of margin, inside the stop radius and outside the
  start radius (both also with one pixel of margin, as PLUS computes them);
* PLUS's fast ``Floor`` adds 2**-17 before truncating; it is reproduced so that a boundary that falls
  exactly on a pixel centre picks the same side.

All quantities are in pixels (PLUS treats frames as having unit spacing).
"""

from __future__ import annotations

import math

import numpy as np

#: PLUS's floor tolerance (vtkImageReslice heritage): values within 2**-17 below an integer round up
_FLOOR_TOL = 7.62939453125e-06


def _plus_floor(value: float) -> int:
    return math.floor(value + _FLOOR_TOL)


def _plus_ceil(value: float) -> int:
    # PLUS writes ceil as -Floor(-x)
    return -_plus_floor(-value)


def clip_extent(frame_shape: tuple[int, int], clip_origin=None, clip_size=None) -> tuple[int, int, int, int]:
    """Inclusive pixel ranges ``(x0, x1, y0, y1)`` kept by a PLUS clip rectangle.

    Parameters
    ----------
    frame_shape : (H, W)
    clip_origin, clip_size : (x, y) pixels, or None for the whole frame. A rectangle with a
        non-positive size is ignored, as in PLUS.
    """
    height, width = int(frame_shape[0]), int(frame_shape[1])
    if clip_origin is None or clip_size is None or clip_size[0] <= 0 or clip_size[1] <= 0:
        # PLUS then uses origin = first pixel and size = extent end, i.e. the whole frame
        clip_origin, clip_size = (0, 0), (width - 1, height - 1)
    x0 = math.ceil(clip_origin[0])
    x1 = math.floor(clip_origin[0] + clip_size[0])
    y0 = math.ceil(clip_origin[1])
    y1 = math.floor(clip_origin[1] + clip_size[1])
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    return max(x0, 0), min(x1, width - 1), max(y0, 0), min(y1, height - 1)


def frame_mask(
    frame_shape: tuple[int, int],
    clip_origin=None,
    clip_size=None,
    fan_angles_deg=(0.0, 0.0),
    fan_origin=(0.0, 0.0),
    fan_radius_start: float = 0.0,
    fan_radius_stop: float = 500.0,
    pixel_spacing=(1.0, 1.0),
) -> np.ndarray:
    """Boolean (H, W) mask of the pixels PLUS pastes into the volume.

    Parameters
    ----------
    frame_shape : (H, W)
    clip_origin, clip_size : clip rectangle (x, y) in pixels, or None.
    fan_angles_deg : (left, right) fan angles in degrees from the vertical; (0, 0) disables the fan.
    fan_origin : (x, y) fan apex in pixels (may lie outside the frame).
    fan_radius_start, fan_radius_stop : radii in pixels (of the x spacing when pixels are not square).
    pixel_spacing : (sx, sy) only the ratio matters (PLUS frames have unit spacing).

    Returns
    -------
    (H, W) bool array.

    Examples
    --------
    >>> m = frame_mask((10, 20), clip_origin=(2, 1), clip_size=(5, 3))
    >>> int(m.sum()), bool(m[1, 7]), bool(m[1, 8])
    (24, True, False)
    """
    height, width = int(frame_shape[0]), int(frame_shape[1])
    x0, x1, y0, y1 = clip_extent(frame_shape, clip_origin, clip_size)
    mask = np.zeros((height, width), bool)
    if x0 > x1 or y0 > y1:
        return mask
    fan_on = fan_angles_deg[0] != 0.0 or fan_angles_deg[1] != 0.0
    if not fan_on:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
        return mask
    sx, sy = float(pixel_spacing[0]), float(pixel_spacing[1])
    aspect = abs(sy / sx)
    tan_left = math.tan(math.radians(fan_angles_deg[0])) * aspect
    tan_right = math.tan(math.radians(fan_angles_deg[1])) * aspect
    if tan_left > tan_right:
        tan_left, tan_right = tan_right, tan_left
    ox, oy = float(fan_origin[0]), float(fan_origin[1])
    r_start2, r_stop2 = fan_radius_start**2, fan_radius_stop**2
    for row in range(y0, y1 + 1):
        dy = row - oy
        start = max(x0, _plus_ceil(tan_left * dy + ox + 1))
        end = min(x1, _plus_floor(tan_right * dy + ox - 1))
        depth2 = dy * dy * sy * sy
        if r_stop2 - depth2 < 0:
            continue
        half = math.sqrt((r_stop2 - depth2) / (sx * sx))
        start = max(start, _plus_ceil(ox - half + 1))
        end = min(end, _plus_floor(ox + half - 1))
        if start > end:
            continue
        mask[row, start : end + 1] = True
        if r_start2 - depth2 > 0:
            inner = math.sqrt((r_start2 - depth2) / (sx * sx))
            skip_start = _plus_ceil(ox - inner + 1)
            skip_end = _plus_floor(ox + inner - 1)
            if skip_start <= skip_end:
                mask[row, max(skip_start, 0) : max(skip_end + 1, 0)] = False
    return mask


def mask_from_config(frame_shape: tuple[int, int], config) -> np.ndarray:
    """:func:`frame_mask` with the clip rectangle and fan of a
    :class:`freehand3d.io.plus_volrec.VolumeReconstructionConfig`."""
    return frame_mask(
        frame_shape,
        clip_origin=config.clip_rectangle_origin,
        clip_size=config.clip_rectangle_size,
        fan_angles_deg=config.fan_angles_deg,
        fan_origin=config.fan_origin_pixel,
        fan_radius_start=config.fan_radius_start_pixel,
        fan_radius_stop=config.fan_radius_stop_pixel,
    )


def mask_corners(mask: np.ndarray) -> np.ndarray:
    """(4, 2) pixel corners (x, y) of the bounding rectangle PLUS uses for the output extent: the
    clip rectangle limited to the frame (PLUS ignores the fan there)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros((0, 2))
    return np.array([[xs.min(), ys.min()], [xs.min(), ys.max()], [xs.max(), ys.min()], [xs.max(), ys.max()]], float)


__all__ = ["clip_extent", "frame_mask", "mask_from_config", "mask_corners"]
