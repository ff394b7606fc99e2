"""Frames -> DualTrack model inputs (SPEC §8).

Local branch (always): ``frame / 255`` in float32, centre crop of ``local_size`` (256) pixels: rows
112:368 and columns 192:448 of a 480x640 frame. No resize, no normalisation.

Global branch, ``global_variant``:

* ``"A"`` ("from disk", the 2025 fine-tune / 2024 training configs): crop 50 px on every side
  (480x640 -> 380x540), :func:`skimage.transform.resize` to 224x224 with its defaults (bilinear,
  Gaussian anti-aliasing with sigma = (scale - 1) / 2, edge mode ``reflect``, uint8 input mapped to
  [0, 1]), then ``uint8(x * 255)`` by truncation, then ``/ 255``; then ``global_norm``.
* ``"B"`` ("on the fly", the 2024 evaluation config): ``/ 255``, full frame resized to 224x224 with
  antialiased bilinear interpolation (``F.interpolate(..., "bilinear", antialias=True)``), then
  ``global_norm``.
* ``"C"`` ("challenge", the 2025 predictor): as B but never normalised.

``global_norm`` = (mean, std): (0, 1) for the evaluation configs, (0.5, 0.25) for the 2024 training
config / legacy README (which one the released 2024 weights expect is ambiguous upstream).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from freehand3d.errors import InputError

#: Frame size the official preprocessing is defined for (H, W).
FRAME_SHAPE = (480, 640)
GLOBAL_VARIANTS = ("A", "B", "C")
#: Pixels removed on every side before the variant-A resize.
VARIANT_A_BORDER = 50


def _check_frames(frames, source=None) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(f"frames must be (N, H, W), got shape {arr.shape}", source)
    if arr.dtype != np.uint8:
        raise InputError(f"frames must be uint8 B-mode images, got {arr.dtype}", source)
    if arr.shape[1:] != FRAME_SHAPE:
        raise InputError(
            f"DualTrack needs {FRAME_SHAPE[1]}x{FRAME_SHAPE[0]} frames (TUS-REC size), got "
            f"{arr.shape[2]}x{arr.shape[1]}; resample or pad the sweep first",
            source,
        )
    return arr


def local_crops(frames: np.ndarray, size: int = 256, device=None) -> torch.Tensor:
    """(N, 480, 640) uint8 -> (N, 1, size, size) float32 centre crops scaled to [0, 1]."""
    arr = _check_frames(frames)
    h, w = arr.shape[1:]
    top, left = (h - size) // 2, (w - size) // 2
    crop = torch.from_numpy(np.ascontiguousarray(arr[:, top : top + size, left : left + size]))
    return (crop.to(device=device, dtype=torch.float32) / 255.0)[:, None]


def global_frames(
    frames: np.ndarray, variant: str = "B", norm=(0.0, 1.0), size: int = 224, device=None
) -> torch.Tensor:
    """(N, 480, 640) uint8 -> (N, 1, size, size) float32 global-branch frames (see module doc)."""
    arr = _check_frames(frames)
    variant = str(variant).upper()
    if variant not in GLOBAL_VARIANTS:
        raise ValueError(f"unknown global preprocessing variant {variant!r}; use one of {GLOBAL_VARIANTS}")
    if variant == "A":
        from skimage.transform import resize

        b = VARIANT_A_BORDER
        resized = np.empty((len(arr), size, size), np.uint8)
        for i, frame in enumerate(arr):
            # skimage maps uint8 to [0, 1]; astype truncates towards zero, as upstream's uint8 cast
            resized[i] = (resize(frame[b:-b, b:-b], (size, size)) * 255).astype(np.uint8)
        out = torch.from_numpy(resized).to(device=device, dtype=torch.float32)[:, None] / 255.0
    else:
        x = torch.from_numpy(arr).to(device=device, dtype=torch.float32)[:, None] / 255.0
        out = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if variant != "C":
        mean, std = (float(v) for v in norm)
        if std <= 0:
            raise ValueError(f"global_norm std must be positive, got {std}")
        if (mean, std) != (0.0, 1.0):
            out = (out - mean) / std
    return out


def preprocess(frames, global_variant: str = "B", global_norm=(0.0, 1.0), device=None):
    """Turn a raw sweep into the two DualTrack inputs.

    Parameters
    ----------
    frames : (N, 480, 640) uint8 B-mode frames (a :class:`~freehand3d.sweep.Sweep`'s ``frames``).
    global_variant : "A", "B" or "C" (module docstring). Preset defaults:
        ``PRESETS[name].global_variant`` ("B" for dualtrack-2024, "C" for dualtrack-tusrec2025).
    global_norm : (mean, std) applied to the global frames (ignored by variant C).
    device : torch device of the returned tensors.

    Returns
    -------
    local : (1, N, 1, 256, 256) float32 tensor.
    global_ : (1, N, 1, 224, 224) float32 tensor.

    Raises
    ------
    InputError
        Frames that are not uint8 (N, 480, 640).

    Examples
    --------
    >>> local, glob = preprocess(np.zeros((3, 480, 640), np.uint8))
    >>> tuple(local.shape), tuple(glob.shape)
    ((1, 3, 1, 256, 256), (1, 3, 1, 224, 224))
    """
    arr = _check_frames(frames)
    return local_crops(arr, device=device)[None], global_frames(arr, global_variant, global_norm, device=device)[None]
