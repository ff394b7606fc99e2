"""Run DualTrack on a sweep: per-frame motion -> absolute poses -> ``ImageToReference``.

Pose convention (SPEC §9). The model's row i is [tx, ty, tz (mm), rx, ry, rz (degrees)] of frame
i+1 relative to frame i, rotation ``R = Rz(rz) Ry(ry) Rx(rx)`` (scipy ``"xyz"``). The matrix M_i maps
frame-(i+1) image coordinates into frame-i image coordinates, and the absolute pose
``G_k = M_0 M_1 ... M_{k-1}`` (G_0 = I) maps frame-k image coordinates into frame 0's.

Image coordinates are DualTrack's: millimetres, origin at the image centre, x along columns, y
along rows, z out of plane. For a W x H frame with spacing (sx, sy) a pixel (col, row) is at
``((col - (W-1)/2) sx, (row - (H-1)/2) sy, 0)`` (for 640x480: col - 319.5, row - 239.5).

:func:`track` returns a sweep whose ``ImageToReference`` is ``G_k @ PixelToImage``: pixels of frame
k -> mm in the *reference frame = frame 0's DualTrack image frame*.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from freehand3d import geometry
from freehand3d.errors import InputError
from freehand3d.sweep import Sweep
from freehand3d.tracking.preprocess import _check_frames, global_frames, local_crops

#: Pixel spacing (mm) of the TUS-REC data the official weights were trained on (SPEC §9); used
#: when a sweep carries no spacing.
TUSREC_SPACING = (0.229389190673828, 0.220979690551758)

#: Global-branch frames run through the 2-D CNN at once (bounds memory for long sweeps).
GLOBAL_CNN_BATCH = 32

#: With ``predict(..., winograd=True)`` (the default), local-CNN convs with at least this many
#: input channels run as Winograd F(2x2,3x3) on CPU (float32/float64): measured faster than
#: oneDNN's direct conv from 128 channels on; the 64-channel layer1 at 128x128 is memory-bound in
#: the transforms and stays a direct conv.
WINOGRAD_MIN_CHANNELS = 128


def compose_poses(head_output, round_float32: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Relative 6-DoF rows -> absolute and local 4x4 poses.

    Parameters
    ----------
    head_output : (N-1, 6) or (1, N-1, 6) array or tensor, rows [tx, ty, tz, rx, ry, rz]
        (mm, degrees, extrinsic x-y-z), row i = frame i+1 relative to frame i.
    round_float32 : round every accumulated product to float32 like upstream's
        ``get_global_and_relative_pred_trackings_from_vectors`` (for bit-level comparisons only).

    Returns
    -------
    poses_global : (N, 4, 4) float64, G_0 = I, G_{i+1} = G_i M_i: frame-k image mm -> frame-0 mm.
    poses_local : (N, 4, 4) float64, L_0 = I, L_{i+1} = M_i.

    Examples
    --------
    >>> g, l = compose_poses(np.array([[1.0, 0, 0, 0, 0, 0], [1.0, 0, 0, 0, 0, 90]]))
    >>> g[2, :3, 3]
    array([2., 0., 0.])
    """
    if isinstance(head_output, torch.Tensor):
        head_output = head_output.detach().cpu().double().numpy()
    params = np.asarray(head_output, dtype=np.float64)
    if params.ndim == 3 and params.shape[0] == 1:
        params = params[0]
    if params.ndim != 2 or params.shape[1] != 6:
        raise ValueError(f"head_output must be (N-1, 6) or (1, N-1, 6), got {params.shape}")
    steps = geometry.params_to_matrix(params, "xyz", degrees=True)
    n = len(params) + 1
    poses_local = np.tile(np.eye(4), (n, 1, 1))
    poses_local[1:] = steps
    poses_global = np.tile(np.eye(4), (n, 1, 1))
    for i, step in enumerate(steps):
        product = poses_global[i] @ step
        poses_global[i + 1] = product.astype(np.float32) if round_float32 else product
    if round_float32:
        poses_local = poses_local.astype(np.float32).astype(np.float64)
    return poses_global, poses_local


def pixel_to_image(frame_shape, spacing) -> np.ndarray:
    """4x4 pixel (col, row, 0) -> DualTrack image mm (centred origin) for a (H, W) frame."""
    h, w = frame_shape
    sx, sy = spacing
    out = np.eye(4)
    out[0, 0], out[1, 1] = sx, sy
    out[0, 3], out[1, 3] = -(w - 1) / 2 * sx, -(h - 1) / 2 * sy
    return out


def _sweep_spacing(sweep: Sweep | None, spacing):
    if spacing is not None:
        return tuple(float(v) for v in spacing), "given"
    if sweep is not None and sweep.spacing is not None:
        return sweep.spacing, "sweep"
    if sweep is not None and sweep.image_to_probe is not None:
        cols = np.linalg.norm(sweep.image_to_probe[:3, :2], axis=0)
        return (float(cols[0]), float(cols[1])), "calibration"
    return TUSREC_SPACING, "TUS-REC default"


def cpu_has_fast_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 / AMX). Without them,
    bf16 convolutions fall back to reference code that is ~50x slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, amp: bool):
    if not amp:
        return contextlib.nullcontext()
    if device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn("this CPU has no native bfloat16 support; amp=True will be much slower than float32", stacklevel=3)
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


def predict(
    frames,
    model,
    device=None,
    dtype=None,
    amp: bool = False,
    global_variant: str | None = None,
    global_norm=None,
    cnn_tile: int | None = None,
    progress: bool = False,
    channels_last: bool = True,
    winograd: bool = True,
) -> dict[str, np.ndarray]:
    """Run the model on raw frames with bounded memory.

    The local CNN runs in temporal tiles (with the halo that makes tiling exact, and with the
    preset's chunking rule for long sweeps); crops are made per tile, so memory does not grow with
    the whole sweep's float crops; attention runs in query blocks.

    Parameters
    ----------
    frames : (N, 480, 640) uint8.
    model : :class:`~freehand3d.tracking.DualTrack` (moved to ``device``/``dtype`` in place).
    device : "cpu", "cuda", ... (default: where the model is).
    dtype : parameter/compute dtype, e.g. torch.float64 for reference runs (default: the model's).
    amp : autocast (float16 on CUDA, bfloat16 on CPU) for speed; on CPUs without native bf16
        (see :func:`cpu_has_fast_bf16`) it is much slower, and a warning says so.
    global_variant, global_norm : global preprocessing (default: the preset's, see
        :func:`~freehand3d.tracking.preprocess`).
    cnn_tile : output frames per local-CNN run (memory knob; the result does not depend on it).
        Default: 128 on CPU, 1024 on CUDA (a whole 2024-preset sweep, no halo overhead);
        0 = no tiling (fastest, memory grows with N).
    progress : show a progress bar.
    channels_last : store the CNN weights channels-last (faster convolutions on CPU and GPU).
        BatchNorm is always folded into the convolutions for inference. Both change results only
        at rounding level (float64 stays within 1e-12 of the unfused model).
    winograd : on CPU without ``amp``, run the local CNN's stride-1 3x3x3 convs with at least
        :data:`WINOGRAD_MIN_CHANNELS` input channels as Winograd F(2x2,3x3) (see
        :mod:`freehand3d.tracking.model.winograd`; rounding-level differences only, float64 within
        1e-10 of the official fixture). 2024 preset, 64 frames, 2 threads on the project CPU:
        whole forward 1.21x faster; on a heavily loaded machine it can be slower (its many smaller
        parallel operations suffer more from contention), see docs/tracking.md.

    Returns
    -------
    dict with ``head_output`` (N-1, 6), ``poses_global`` and ``poses_local`` (N, 4, 4), float64.
    """
    arr = _check_frames(frames)
    n = len(arr)
    try:
        model.check_length(n)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    cfg = model.config
    params = next(model.parameters())
    device = params.device if device is None else torch.device(device)
    dtype = params.dtype if dtype is None else dtype
    model.to(device=device, dtype=dtype).eval()
    if cnn_tile is None:
        # a GPU holds a whole official-length sweep's activations; a CPU run keeps RAM bounded
        cnn_tile = 1024 if device.type == "cuda" else model.local_encoder.cnn_tile
    # inference copies of the CNNs: BatchNorm folded into the convs, channels-last weights; the
    # caller's model is left as it is (apart from device/dtype)
    use_winograd = winograd and device.type == "cpu" and not amp
    local_cnn = model.local_encoder.cnn.fused_for_inference(WINOGRAD_MIN_CHANNELS if use_winograd else None)
    global_cnn = model.global_encoder.cnn.fused_for_inference()
    if channels_last:
        local_cnn.to(memory_format=torch.channels_last_3d)
        global_cnn.to(memory_format=torch.channels_last)
    variant = cfg.global_variant if global_variant is None else global_variant
    norm = cfg.global_norm if global_norm is None else global_norm

    def get_clip(lo, hi):
        return local_crops(arr[lo:hi], cfg.local_size, device=device).to(dtype)[None]

    bar = _progress_bar(n) if progress else None
    with torch.inference_mode(), _autocast(device, amp), (bar or contextlib.nullcontext()):
        task = bar.add_task("DualTrack local CNN", total=n) if bar else None
        report = (lambda done: bar.update(task, completed=done)) if bar else None
        tokens = model.local_encoder.frame_tokens(get_clip, n, cnn_tile, report, cnn=local_cnn)
        local_features = model.local_encoder.encode_tokens(tokens)
        indices = model.global_indices(n, device=device)
        feats = []
        for start in range(0, len(indices), GLOBAL_CNN_BATCH):
            chosen = indices[start : start + GLOBAL_CNN_BATCH].cpu().numpy()
            batch = global_frames(arr[chosen], variant, norm, cfg.global_size, device=device).to(dtype)[None]
            feats.append(model.global_encoder.frame_features(batch, cnn=global_cnn))
        global_features = model.global_encoder.encode_features(torch.cat(feats, dim=1), indices)
        head = model.decode(local_features, global_features)["head_output"]
    head = head[0].double().cpu().numpy()
    poses_global, poses_local = compose_poses(head)
    return {"head_output": head, "poses_global": poses_global, "poses_local": poses_local}


def _progress_bar(total):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn(), transient=True)


def track(
    sweep_or_frames,
    model,
    device=None,
    dtype=None,
    amp: bool = False,
    spacing=None,
    global_variant: str | None = None,
    global_norm=None,
    cnn_tile: int | None = None,
    progress: bool = False,
) -> Sweep:
    """Estimate the trajectory of a sweep from its frames alone.

    Parameters
    ----------
    sweep_or_frames : :class:`~freehand3d.sweep.Sweep` or (N, 480, 640) uint8 frames.
    model : a loaded :class:`~freehand3d.tracking.DualTrack` (see :func:`load_dualtrack`).
    device, dtype, amp, global_variant, global_norm, cnn_tile, progress : see :func:`predict`.
    spacing : (sx, sy) mm per pixel. Default: the sweep's spacing, else the scale of its
        ``image_to_probe``, else the TUS-REC spacing the official weights were trained on.

    Returns
    -------
    Sweep
        Same frames, timestamps, per-frame fields and metadata, ``spacing`` set, and one transform,
        ``ImageToReference`` (N, 4, 4): pixel (col, row, 0, 1) of frame k -> mm in frame 0's
        DualTrack image frame (origin at the image centre, x along columns, y along rows), i.e.
        ``poses_global[k] @ pixel_to_image``. The input's own transforms (e.g. ground truth) are not
        copied. ``metadata["DualTrackPreset"]`` names the model and
        ``metadata["DualTrackSpacingSource"]`` where the spacing came from.

    Raises
    ------
    InputError
        Frames of the wrong size or type, fewer than 2 frames or more than the preset supports.
    """
    sweep = sweep_or_frames if isinstance(sweep_or_frames, Sweep) else None
    frames = sweep.frames if sweep is not None else _check_frames(sweep_or_frames)
    source = sweep.source if sweep is not None else None
    try:
        _check_frames(frames, source)
        result = predict(frames, model, device, dtype, amp, global_variant, global_norm, cnn_tile, progress)
    except InputError as exc:
        if exc.path is None and source is not None:
            raise InputError(exc.problem, source) from None
        raise
    used_spacing, spacing_source = _sweep_spacing(sweep, spacing)
    if spacing_source == "TUS-REC default":
        warnings.warn("sweep has no pixel spacing; assuming the TUS-REC spacing", stacklevel=2)
    image_to_reference = result["poses_global"] @ pixel_to_image(frames.shape[1:], used_spacing)
    metadata = dict(sweep.metadata) if sweep is not None else {}
    metadata.update(
        {"DualTrackPreset": model.config.name, "DualTrackSpacingSource": spacing_source}
    )
    return Sweep(
        frames=frames,
        spacing=used_spacing,
        timestamps=None if sweep is None else sweep.timestamps.copy(),
        transforms={"ImageToReference": image_to_reference},
        metadata=metadata,
        frame_fields={} if sweep is None else {k: list(v) for k, v in sweep.frame_fields.items()},
        source=source,
    )
