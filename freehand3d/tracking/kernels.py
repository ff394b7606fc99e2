"""Convolution kernel choice for the local CNN, by measurement on this machine (like
``torch.backends.cudnn.benchmark``), cached on disk.

On CPU each stride-1 3x3x3 convolution of the local ResNet can run as oneDNN's direct convolution,
as Winograd F(2x2,3x3) (:mod:`freehand3d.tracking.model.winograd`) or as Winograd F(4x4,3x3)
(:mod:`freehand3d.tracking.model.winograd4`, 4x fewer multiply-adds). Which one is faster depends
on the CPU, the layer's shape, the number of threads and the load: on one AMD EPYC (AVX-512)
F(2x2) won from 128 channels on, on an AVX2 EPYC under load it lost on every layer (2-4x) while
F(4x4) won 1.3x-3.2x, on an Intel Xeon at 1 thread F(2x2) lost on the 128-channel layer. So
``kernel="auto"`` measures them all (and oneDNN's direct conv in the plain memory layout) on every
distinct layer shape once -- a few frames each, alternating, best of :data:`ROUNDS` -- and keeps
the fastest; a layer leaves the direct conv only for a kernel that wins by :data:`MARGIN`, so noise
cannot make the forward slower than the plain direct one.

The choices are stored in ``conv_kernels.json`` under :func:`cache_dir` (``$FREEHAND3D_CACHE_DIR``,
else ``$XDG_CACHE_HOME/freehand3d``, else ``~/.cache/freehand3d``), keyed by CPU model, torch
version, thread count, dtype and layer shape, with the load average per CPU at the time. A
measurement taken while the machine was overloaded (more than :data:`OVERLOAD` runnable processes
per CPU) is taken again, once per process, when the load has since halved; delete the file (or
pass ``remeasure=True``) after changing hardware. On CUDA, ``auto`` sets
``torch.backends.cudnn.benchmark`` instead (cuDNN measures its own algorithms).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

#: kernel names accepted by :func:`freehand3d.tracking.predict` / ``freehand3d track --kernel``
KERNELS = ("auto", "direct", "winograd", "winograd4")
#: the kernels ``auto`` times on every layer shape (``contiguous``: direct conv, plain layout)
CANDIDATES = ("direct", "winograd", "winograd4", "contiguous")

#: alternating timing rounds per layer (best kept)
ROUNDS = 3
#: input frames per timed call: the streamed forward's piece (streaming.DEFAULT_PIECE); at 6 frames the
#: 64-channel layer measured F(4x4) level with direct (44.7 vs 45.9 ms/frame) although F(4x4) on every
#: layer ran the whole 32-frame forward 1.31x faster than that choice (quiet AMD EPYC, 1 thread)
MEASURE_FRAMES = 16
#: Winograd must be at least this much faster to be chosen (timing noise on a loaded machine)
MARGIN = 1.05
#: load average per CPU above which a cached measurement counts as taken under overload
OVERLOAD = 1.5

_MEMO: dict[str, dict] = {}


def cache_dir() -> Path:
    env = os.environ.get("FREEHAND3D_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "freehand3d"


def cache_path() -> Path:
    return cache_dir() / "conv_kernels.json"


def cpu_name() -> str:
    """CPU model name (``/proc/cpuinfo``), for cache keys and benchmark headers."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _machine_key(threads: int, dtype: torch.dtype) -> str:
    # "direct v2": the direct conv calls oneDNN itself for float32 (streaming._conv_valid); choices
    # cached before measured ATen's much slower im2col fallback on small layers
    return (f"{cpu_name()} | torch {torch.__version__} | {threads} threads | {str(dtype).replace('torch.', '')}"
            " | direct v2")


def _load() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _save(data: dict) -> None:
    from freehand3d._atomic import atomic_path

    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time


def eligible_layers(cnn: nn.Module, crop_size: int) -> list[tuple[nn.Module, str, tuple[int, int, int, int]]]:
    """(parent module, attribute, (Cin, Cout, H, W)) of every stride-1 3x3x3 conv of a folded
    :class:`~freehand3d.tracking.model.resnet.VideoResNet18` for crops of ``crop_size`` px."""
    from freehand3d.tracking.model.winograd import is_winograd_eligible

    out = []
    side = -(-crop_size // 2)  # after the stride-2 stem
    for i, layer in enumerate(cnn.layers):
        if i > 0:
            side = -(-side // 2)
        for block in layer:
            for name in ("conv1", "conv2"):
                conv = getattr(block, name)
                if is_winograd_eligible(conv):
                    out.append((block, name, (conv.in_channels, conv.out_channels, side, side)))
    return out


def load_per_cpu() -> float | None:
    """1-minute load average divided by the number of CPUs (None where unknown)."""
    try:
        return os.getloadavg()[0] / max(os.cpu_count() or 1, 1)
    except (OSError, AttributeError):
        return None


def _time_layer(conv: nn.Conv3d, shape, dtype, rounds: int) -> dict[str, float]:
    """Best seconds per call of every kernel in :data:`CANDIDATES`, alternating."""
    from freehand3d.tracking.model.streaming import _conv_valid
    from freehand3d.tracking.model.winograd import WinogradConv3d
    from freehand3d.tracking.model.winograd4 import Winograd4Conv3d

    import copy

    cin, _, h, w = shape
    gen = torch.Generator().manual_seed(0)
    plain = torch.randn(1, cin, MEASURE_FRAMES + 2, h, w, generator=gen, dtype=dtype)
    x = plain.contiguous(memory_format=torch.channels_last_3d)
    direct = copy.deepcopy(conv).to(dtype=dtype, memory_format=torch.channels_last_3d)
    flat = copy.deepcopy(conv).to(dtype=dtype, memory_format=torch.contiguous_format)
    fast, fast4 = WinogradConv3d(direct), Winograd4Conv3d(direct)
    runs = {"direct": lambda: _conv_valid(direct, x), "winograd": lambda: fast(x, valid_time=True),
            "winograd4": lambda: fast4(x, valid_time=True), "contiguous": lambda: _conv_valid(flat, plain)}
    best = {k: float("inf") for k in runs}
    with torch.inference_mode():
        for fn in runs.values():
            fn()  # warm-up: oneDNN primitive creation, kernel transform, numba compilation
        for _ in range(rounds):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - start)
    return best


def _pick(times: dict[str, float]) -> str:
    """The fastest channels-last kernel; anything but the direct conv must win by :data:`MARGIN`."""
    best = "direct"
    for name in ("winograd", "winograd4"):
        t = times.get(name, float("inf"))
        if t * MARGIN < times["direct"] and t < times.get(best, float("inf")):
            best = name
    return best


def _stale(entry: dict, now: float | None) -> bool:
    """A measurement taken under overload, with the load at least halved since."""
    then = entry.get("load_per_cpu")
    return then is not None and now is not None and then > OVERLOAD and now < then / 2


def choose_kernels(cnn: nn.Module, crop_size: int, threads: int | None = None, dtype=torch.float32,
                   remeasure: bool = False, rounds: int = ROUNDS) -> dict[str, dict]:
    """Measured (or cached) choice per layer shape: ``{"Cin x Cout @ HxW": {"<kernel>_ms" for every
    candidate, "kernel", "load_per_cpu"}}`` for the current thread count."""
    threads = torch.get_num_threads() if threads is None else threads
    key = _machine_key(threads, dtype)
    layers = eligible_layers(cnn, crop_size)
    names = ["{}x{}@{}x{}".format(*shape) for _, _, shape in layers]
    if not remeasure and key in _MEMO and all(name in _MEMO[key] for name in names):
        return _MEMO[key]
    data = _load()
    entry = {} if remeasure else dict(data.get(key, {}))
    now = load_per_cpu()
    missing = False
    for parent, attr, shape in layers:
        name = "{}x{}@{}x{}".format(*shape)
        old = entry.get(name)
        if old is not None and all(f"{k}_ms" in old for k in CANDIDATES) and not _stale(old, now):
            continue
        times = _time_layer(getattr(parent, attr), shape, dtype, rounds)
        entry[name] = {f"{k}_ms": round(v * 1e3 / MEASURE_FRAMES, 3) for k, v in times.items()}
        entry[name]["kernel"] = _pick(times)
        entry[name]["load_per_cpu"] = None if now is None else round(now, 2)
        missing = True
    if missing:
        data = _load()
        data[key] = {**data.get(key, {}), **entry}
        _save(data)
    _MEMO[key] = entry
    return entry


def channels_last_wins(measured: dict) -> bool:
    """Channels-last (with the per-layer chosen kernel) against the plain layout's direct convs,
    summed over the measured layer shapes; the plain layout needs a clear win (:data:`MARGIN`),
    channels-last being the layout the rest of the pipeline was tuned for."""
    cl = sum(v.get(f"{v['kernel']}_ms", v["direct_ms"]) for v in measured.values())
    plain = sum(v.get("contiguous_ms", float("inf")) for v in measured.values())
    return not plain * MARGIN < cl


def apply_kernels(cnn: nn.Module, crop_size: int, kernel: str, threads: int | None = None, dtype=torch.float32,
                  min_channels: int = 128) -> dict[str, str]:
    """Replace the eligible convs of a folded CNN copy (in place) per ``kernel``; returns
    ``{layer shape: kernel}``.

    ``direct``: keep every conv. ``winograd``: the fixed rule, Winograd F(2x2,3x3) from
    ``min_channels`` input channels. ``winograd4``: Winograd F(4x4,3x3) on every eligible conv.
    ``auto``: per layer as measured by :func:`choose_kernels`; when the plain memory layout
    measured faster than channels-last (:func:`channels_last_wins`), every conv stays direct and the
    returned kernels read ``"direct (contiguous)"`` -- the caller then keeps the plain layout.
    """
    from freehand3d.tracking.model.winograd import WinogradConv3d
    from freehand3d.tracking.model.winograd4 import Winograd4Conv3d

    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    layers = eligible_layers(cnn, crop_size)
    measured = choose_kernels(cnn, crop_size, threads, dtype) if kernel == "auto" and layers else {}
    used = {}
    if kernel == "auto" and measured and not channels_last_wins(measured):
        # the plain layout's direct convs beat channels-last (and with it Winograd) on this machine
        return {"{}x{}@{}x{}".format(*shape): "direct (contiguous)" for _, _, shape in layers}
    for parent, attr, shape in layers:
        name = "{}x{}@{}x{}".format(*shape)
        if kernel == "auto":
            choice = measured[name]["kernel"]
        elif kernel == "winograd":
            choice = "winograd" if shape[0] >= min_channels else "direct"
        else:
            choice = kernel  # direct, winograd4
        if choice == "winograd":
            setattr(parent, attr, WinogradConv3d(getattr(parent, attr)))
        elif choice == "winograd4":
            setattr(parent, attr, Winograd4Conv3d(getattr(parent, attr)))
        used[name] = choice
    return used
