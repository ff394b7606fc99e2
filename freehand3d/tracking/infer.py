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
from freehand3d.tracking.model.streaming import DEFAULT_PIECE
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


#: ``precision`` values of :func:`predict` / ``freehand3d track --precision``
PRECISIONS = ("fp32", "bf16", "fp64")


@contextlib.contextmanager
def _num_threads(threads: int | None):
    if threads is None:
        yield torch.get_num_threads()
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield int(threads)
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _cudnn_benchmark(on: bool):
    if not on:
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


class _CastCNN(torch.nn.Module):
    """Runs a CNN copy in another dtype (bf16 convolutions) and hands back the caller's dtype."""

    def __init__(self, cnn: torch.nn.Module, dtype: torch.dtype):
        super().__init__()
        self.cnn, self.dtype = cnn.to(dtype), dtype

    def forward(self, x):
        return self.cnn(x.to(self.dtype)).to(x.dtype)


def _resolve_precision(precision, dtype, params_dtype, amp):
    if precision is None:
        dtype = params_dtype if dtype is None else dtype
        precision = {torch.float64: "fp64", torch.bfloat16: "bf16"}.get(dtype, "fp32")
        if precision == "bf16":
            dtype = torch.float32
        return precision if not amp else "autocast", dtype
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if amp:
        raise ValueError("pass either amp=True (autocast) or precision, not both")
    return precision, torch.float64 if precision == "fp64" else torch.float32


def inference_cnns(model, device, precision, dtype, kernel="auto", threads=None, channels_last=True):
    """Inference copies of the two CNNs (the caller's model is left as it is): BatchNorm folded into
    the convs, channels-last weights, the local CNN's kernels chosen per ``kernel`` (CPU fp32/fp64)
    and, for ``precision="bf16"``, bfloat16 convolutions (the global CNN wrapped so it takes and
    returns the model's dtype). Returns (local_cnn, global_cnn, local-input dtype, kernels)."""
    from freehand3d.tracking.kernels import apply_kernels

    cfg = model.config
    device = torch.device(device)
    local_cnn = model.local_encoder.cnn.fused_for_inference()
    kernels = {}
    if device.type == "cpu" and precision in ("fp32", "fp64"):
        kernels = apply_kernels(local_cnn, cfg.local_size, kernel, threads, dtype, WINOGRAD_MIN_CHANNELS)
    global_cnn = model.global_encoder.cnn.fused_for_inference()
    if any(v == "direct (contiguous)" for v in kernels.values()):
        channels_last = False  # measured: the plain layout is faster on this machine
    if channels_last:
        local_cnn.to(memory_format=torch.channels_last_3d)
        global_cnn.to(memory_format=torch.channels_last)
    conv_dtype = torch.bfloat16 if precision == "bf16" else dtype
    if precision == "bf16":
        local_cnn, global_cnn = local_cnn.to(torch.bfloat16), _CastCNN(global_cnn, torch.bfloat16)
    return local_cnn, global_cnn, conv_dtype, kernels


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
    winograd: bool | None = None,
    precision: str | None = None,
    kernel: str = "auto",
    threads: int | None = None,
    piece: int | None = None,
) -> dict[str, np.ndarray]:
    """Run the model on raw frames with bounded memory.

    The local CNN is streamed over time in pieces of ``piece`` frames
    (:mod:`freehand3d.tracking.model.streaming`: exact, nothing computed twice, memory independent
    of the sweep's length) with the preset's chunking rule for long sweeps; crops are made per
    piece; attention runs in query blocks.

    Parameters
    ----------
    frames : (N, 480, 640) uint8.
    model : :class:`~freehand3d.tracking.DualTrack` (moved to ``device``/``dtype`` in place).
    device : "cpu", "cuda", ... (default: where the model is).
    dtype : parameter/compute dtype, e.g. torch.float64 for reference runs (default: the model's);
        an alternative to ``precision``.
    amp : autocast (float16 on CUDA, bfloat16 on CPU) over the whole network (legacy; prefer
        ``precision="bf16"``); on CPUs without native bf16 (see :func:`cpu_has_fast_bf16`) it is
        much slower, and a warning says so.
    global_variant, global_norm : global preprocessing (default: the preset's, see
        :func:`~freehand3d.tracking.preprocess`).
    cnn_tile : run the local CNN in halo tiles of this many output frames instead of streaming it
        (0 = one piece); the result does not depend on it. Kept for comparisons.
    progress : show a progress bar; or a callable ``progress(done, total)`` called as the local CNN
        has seen ``done`` of the ``total`` frames (the longest part of the run).
    channels_last : store the CNN weights channels-last (faster convolutions on CPU and GPU).
        BatchNorm is always folded into the convolutions for inference. Both change results only
        at rounding level (float64 stays within 1e-12 of the unfused model).
    winograd : legacy switch: True = ``kernel="winograd"``, False = ``kernel="direct"``.
    precision : ``"fp32"`` (default for a float32 model), ``"fp64"`` (reference), or ``"bf16"``:
        the two CNNs' convolutions in bfloat16 (oneDNN/cuDNN accumulate each in float32; the
        activations between layers are rounded to bfloat16), everything after them -- pooling,
        transformers, fusion, head -- in float32 and the pose composition in float64. Error against
        fp32 in docs/tracking.md. Fast only where the hardware has bf16 (CPUs with AVX512-BF16/AMX,
        GPUs); elsewhere a warning says it will be slow.
    kernel : local-CNN convolution kernels on CPU (fp32/fp64): ``"auto"`` (default) picks per layer
        shape the fastest of the direct conv, Winograd F(2x2,3x3) and Winograd F(4x4,3x3) by
        measuring them on this machine once (cached on disk, :mod:`freehand3d.tracking.kernels`);
        ``"direct"``: oneDNN everywhere; ``"winograd"``: F(2x2,3x3) from
        :data:`WINOGRAD_MIN_CHANNELS` input channels; ``"winograd4"``: F(4x4,3x3) on every
        stride-1 3x3x3 conv (:mod:`freehand3d.tracking.model.winograd4`). On CUDA ``auto`` turns on
        ``cudnn.benchmark``.
    threads : CPU threads for this call (default: torch's current setting); restored afterwards.
    piece : frames per streamed local-CNN piece (memory knob; the result does not depend on it).
        Default 16 on CPU (:data:`~freehand3d.tracking.model.streaming.DEFAULT_PIECE`), 256 on CUDA.

    Returns
    -------
    dict with ``head_output`` (N-1, 6), ``poses_global`` and ``poses_local`` (N, 4, 4), float64,
    and ``info``: ``{"precision", "kernels" (layer shape -> kernel), "threads", "device"}``.
    """
    arr = _check_frames(frames)
    n = len(arr)
    try:
        model.check_length(n)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if winograd is not None:
        kernel = "winograd" if winograd else "direct"
    from freehand3d.tracking.kernels import KERNELS

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    cfg = model.config
    params = next(model.parameters())
    device = params.device if device is None else torch.device(device)
    precision, dtype = _resolve_precision(precision, dtype, params.dtype, amp)
    model.to(device=device, dtype=dtype).eval()
    if precision == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        warnings.warn("this CPU has no native bfloat16 support; precision='bf16' will be much slower than fp32",
                      stacklevel=2)
    with _num_threads(threads) as n_threads, _cudnn_benchmark(device.type == "cuda" and kernel == "auto"):
        local_cnn, global_cnn, conv_dtype, kernels = inference_cnns(model, device, precision, dtype, kernel,
                                                                     n_threads, channels_last)
        # kernel="auto"'s first measurement on a machine leaves ~230 MB of freed heap resident
        # (2024 layout, 1 thread; RSS 1177 vs 947 MiB before the stream starts)
        release_free_memory()
        variant = cfg.global_variant if global_variant is None else global_variant
        norm = cfg.global_norm if global_norm is None else global_norm

        def get_clip(lo, hi):
            return local_crops(arr[lo:hi], cfg.local_size, device=device).to(conv_dtype)[None]

        bar = _progress_bar(n) if progress and not callable(progress) else None
        with torch.inference_mode(), _autocast(device, amp), (bar or contextlib.nullcontext()):
            task = bar.add_task("DualTrack local CNN", total=n) if bar else None
            report = (lambda done: bar.update(task, completed=done)) if bar else (
                (lambda done: progress(done, n)) if callable(progress) else None)
            tile_cnn = None
            if cnn_tile is not None:
                tile_cnn = _CastCNN(local_cnn, torch.bfloat16) if precision == "bf16" else local_cnn

                def tile_clip(lo, hi):
                    return get_clip(lo, hi).to(dtype)

                tokens = model.local_encoder.frame_tokens(tile_clip, n, cnn_tile, report, cnn=tile_cnn)
            else:
                if piece is None:
                    piece = 256 if device.type == "cuda" else DEFAULT_PIECE
                tokens = stream_tokens(model.local_encoder, local_cnn, get_clip, n, piece, report, dtype)
            # the local CNN's inference copy (folded weights, Winograd's transformed kernels: ~0.6 GB
            # for the 2024 layout with F(4x4)) is done: free it before the transformers and the
            # decoder, whose memory grows with the sweep (peak RSS at 1030 frames, docs/tracking.md)
            local_cnn = tile_cnn = None
            local_features = model.local_encoder.encode_tokens(tokens)
            indices = model.global_indices(n, device=device)
            feats = []
            for start in range(0, len(indices), GLOBAL_CNN_BATCH):
                chosen = indices[start : start + GLOBAL_CNN_BATCH].cpu().numpy()
                batch = global_frames(arr[chosen], variant, norm, cfg.global_size, device=device).to(dtype)[None]
                feats.append(model.global_encoder.frame_features(batch, cnn=global_cnn))
                del batch
                release_free_memory()
            global_cnn = None  # likewise
            global_features = model.global_encoder.encode_features(torch.cat(feats, dim=1), indices)
            head = model.decode(local_features, global_features)["head_output"]
    head = head[0].double().cpu().numpy()
    poses_global, poses_local = compose_poses(head)
    info = {"precision": precision, "kernels": kernels, "threads": n_threads, "device": str(device)}
    return {"head_output": head, "poses_global": poses_global, "poses_local": poses_local, "info": info}


def stream_tokens(encoder, cnn, get_clip, n_frames: int, piece: int = None, progress=None, out_dtype=None):
    """Per-frame local tokens (B, N, pool_dim): the (folded) CNN streamed over time in pieces
    (:class:`~freehand3d.tracking.model.streaming.StreamingCNN`), the preset's chunking rule
    applied (the stream restarts, zero-padded, at each chunk border), then the spatial pooling.

    ``get_clip(lo, hi)`` -> (B, hi - lo, 1, S, S) crops in the CNN's dtype; ``out_dtype``: the
    dtype the maps are cast to before pooling (the pooling's)."""
    from freehand3d.tracking.model.local import cnn_chunks
    from freehand3d.tracking.model.streaming import StreamingCNN

    piece = DEFAULT_PIECE if not piece or piece <= 0 else int(piece)
    out = []
    for chunk_lo, chunk_hi in cnn_chunks(n_frames, encoder.cfg.cnn_chunk_threshold):
        stream = StreamingCNN(cnn)
        for lo in range(chunk_lo, chunk_hi, piece):
            hi = min(lo + piece, chunk_hi)
            clip = get_clip(lo, hi)
            maps = stream.push(clip.transpose(1, 2), final=hi == chunk_hi)
            if maps.shape[2]:
                out.append(_pool_maps(encoder, maps, out_dtype))
            del clip, maps
            release_free_memory()
            if progress is not None:
                progress(hi)
    return torch.cat(out, dim=1)


def _malloc_trim():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim(0)``; nothing elsewhere).

    Called after every streamed piece: each piece allocates and frees the same activations and
    Winograd buffers, but glibc only returns the top of its heaps, so the free pages between
    live allocations stayed resident and the peak RSS crept up piece after piece (2024 layout,
    F(4x4), 2 threads, 16-frame pieces: the per-piece peak grew 1954 -> 2301 MiB over 10 pieces,
    and to ~2.9 GB at 1030 frames; with the trim it stays flat, docs/tracking.md). A trim costs
    well under a millisecond plus the page faults of re-touching what it released."""
    if _TRIM is not None:
        _TRIM(0)


def _pool_maps(encoder, maps, out_dtype=None):
    """(B, C, T, g, g) CNN maps -> (B, T, pool_dim) tokens."""
    b, c, t = maps.shape[:3]
    if out_dtype is not None and maps.dtype != out_dtype:
        maps = maps.to(out_dtype)
    flat = maps.transpose(1, 2).reshape(b * t, c, *maps.shape[3:])
    return encoder.pool(flat).view(b, t, -1)


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
    precision: str | None = None,
    kernel: str = "auto",
    threads: int | None = None,
    winograd: bool | None = None,
    piece: int | None = None,
) -> Sweep:
    """Estimate the trajectory of a sweep from its frames alone.

    Parameters
    ----------
    sweep_or_frames : :class:`~freehand3d.sweep.Sweep` or (N, 480, 640) uint8 frames.
    model : a loaded :class:`~freehand3d.tracking.DualTrack` (see :func:`load_dualtrack`).
    device, dtype, amp, global_variant, global_norm, cnn_tile, progress, precision, kernel, threads,
    winograd, piece : see :func:`predict`.
    spacing : (sx, sy) mm per pixel. Default: the sweep's spacing, else the scale of its
        ``image_to_probe``, else the TUS-REC spacing the official weights were trained on.

    Returns
    -------
    Sweep
        Same frames, timestamps, per-frame fields and metadata, ``spacing`` set, and one transform,
        ``ImageToReference`` (N, 4, 4): pixel (col, row, 0, 1) of frame k -> mm in frame 0's
        DualTrack image frame (origin at the image centre, x along columns, y along rows), i.e.
        ``poses_global[k] @ pixel_to_image``. The input's own transforms (e.g. ground truth) are not
        copied. ``metadata["DualTrackPreset"]`` names the model,
        ``metadata["DualTrackSpacingSource"]`` where the spacing came from and
        ``metadata["DualTrackPrecision"]`` the precision it ran in.

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
        result = predict(frames, model, device, dtype, amp, global_variant, global_norm, cnn_tile, progress,
                         winograd=winograd, precision=precision, kernel=kernel, threads=threads, piece=piece)
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
        {
            "DualTrackPreset": model.config.name,
            "DualTrackSpacingSource": spacing_source,
            "DualTrackPrecision": result["info"]["precision"],
            # which local-CNN layers ran as Winograd (CPU): "Cin x Cout @ H x W kernel, ..."
            "DualTrackKernels": ", ".join(f"{k} {v}" for k, v in result["info"]["kernels"].items()),
        }
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
