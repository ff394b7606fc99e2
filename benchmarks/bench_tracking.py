"""DualTrack inference speed and peak memory, side by side in one run.

Rows (each measured in its own subprocess, so peak memory is per case):

* ``reference fp32``: the plain eager forward of the same network -- ``model(local, global)``
  under ``torch.no_grad`` on the whole preprocessed sweep at once, textbook attention
  (softmax(QK^T/sqrt(d) + bias) V), default memory layout. This is how a straightforward
  implementation (and the official code) runs it.
* ``ours fp32``: :func:`freehand3d.tracking.predict` -- inference mode, BatchNorm folded, fused
  scaled-dot-product attention, channels-last convolutions, local CNN streamed in pieces, crops
  made per piece, and ``kernel="auto"``: on CPU each stride-1 3x3x3 conv of the local CNN runs as
  whichever of oneDNN's direct conv, Winograd F(2x2,3x3) and Winograd F(4x4,3x3) measured fastest
  for its shape on this machine (:mod:`freehand3d.tracking.kernels`, cached on disk).
* ``ours fp32 direct conv`` / ``ours fp32 Winograd F2`` / ``ours fp32 Winograd F4`` (CPU only): the
  same with ``kernel="direct"`` (oneDNN everywhere), ``"winograd"`` (F(2x2,3x3) from 128 channels)
  and ``"winograd4"`` (F(4x4,3x3) on every eligible conv), to show what each buys here.
  ``--cases`` picks the rows (``reference fp32`` is always needed).
* ``ours bf16-autocast`` (CPU) / ``ours fp16-autocast`` (CUDA): ``amp=True`` (Winograd is fp32/fp64
  only, so autocast runs oneDNN/cuDNN convs in half precision). Skipped on CPUs without native
  bf16 (AVX512-BF16 / AMX), where oneDNN's bf16 convs are reference code (~50x slower).

Columns: seconds per frame (best over ``--rounds`` alternating rounds x ``--repeat`` runs), peak
resident memory of the process (CPU) or peak allocated GPU memory (CUDA), speed-up relative to the
reference on the same device, speed-up relative to the ~0.36 s/frame the issue reports for the
official code on the project CPU (CPU rows), and max |difference| of the head output from the
reference fp32 output (same random weights) relative to its largest value.

Usage::

    python benchmarks/bench_tracking.py                 # 64 frames, 2 threads, CPU (+ CUDA if present)
    python benchmarks/bench_tracking.py --frames 16 --repeat 1
    python benchmarks/bench_tracking.py --conv-layers --threads 1   # one conv per stage, direct vs Winograd F2/F4

The issue reports about 0.36 s/frame for the official code on the project's CPU (not measured here;
quoted in the last line and in the ``vs 0.36 s`` column).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {
    "reference fp32": dict(impl="reference", amp=False),
    "ours fp32": dict(impl="ours", amp=False, kernel="auto"),
    "ours fp32 direct conv": dict(impl="ours", amp=False, kernel="direct", cpu_only=True),
    "ours fp32 Winograd F2": dict(impl="ours", amp=False, kernel="winograd", cpu_only=True),
    "ours fp32 Winograd F4": dict(impl="ours", amp=False, kernel="winograd4", cpu_only=True),
    "ours autocast": dict(impl="ours", amp=True, precision="bf16"),
}

#: The official code's speed on the project CPU, as the issue reports it (not measured here).
OFFICIAL_CPU_S_PER_FRAME = 0.36


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "unknown CPU").strip()
    flags = fields.get("Flags", "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = ", native bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else ""
    return f"{name} ({isa}{bf16})"


def _frames(n):
    import numpy as np

    # deterministic speckle-like frames; content does not change the cost
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 480, 640), dtype=np.uint8)


def run_case(name, frames, device, threads, repeat, seed=0):
    import numpy as np
    import torch

    from freehand3d.tracking import DualTrack, predict, preprocess
    from freehand3d.tracking.model import attention

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    case = CASES[name]
    model = DualTrack("dualtrack-2024").eval().to(device)
    arr = _frames(frames)
    times, cpu_times, head = [], [], None
    # warm-up on 2 frames (oneDNN primitives, numba kernels loaded from their cache and, for
    # kernel="auto", the one-time kernel measurement, cached on disk), the same for every case
    if case["impl"] == "reference":
        attention.USE_FUSED_ATTENTION = False
        with torch.no_grad():
            model(*preprocess(arr[:2], device=device))
    else:
        opts = {"precision": case["precision"]} if case.get("precision") else {"kernel": case["kernel"]}
        predict(arr[:2], model, device=device, **opts)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start, cpu0 = time.perf_counter(), time.process_time()
        if case["impl"] == "reference":
            attention.USE_FUSED_ATTENTION = False
            local, glob = preprocess(arr, device=device)
            with torch.no_grad():
                head = model(local, glob)["head_output"][0].double().cpu().numpy()
        else:
            attention.USE_FUSED_ATTENTION = True
            if case.get("precision"):
                head = predict(arr, model, device=device, precision=case["precision"])["head_output"]
            else:
                head = predict(arr, model, device=device, kernel=case["kernel"])["head_output"]
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu0)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"s_per_frame": min(times) / frames, "cpu_s_per_frame": min(cpu_times) / frames, "peak_mb": peak_mb,
            "head": np.asarray(head).tolist()}


def memory_case(frames, threads, mode):
    """One streamed (``mode="stream"``) or halo-tiled (``mode="tiled"``, the previous default:
    128-frame tiles) fp32 forward of the 2024 preset on ``frames`` frames in this process: wall
    time, peak RSS (ru_maxrss) and the head output."""
    import numpy as np
    import torch

    from freehand3d.tracking import DualTrack, predict

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    # the 2024 preset takes at most 1024 frames; longer sweeps use the 2025 layout (chunked CNN)
    model = DualTrack("dualtrack-2024" if frames <= 1024 else "dualtrack-tusrec2025").eval()
    arr = _frames(frames)
    start = time.perf_counter()
    # modes: "tiled" (128-frame halo tiles), "stream" (default piece) or "stream:P" (pieces of P),
    # each optionally "+KERNEL" (auto, the default, direct, winograd, winograd4)
    mode, _, kernel = mode.partition("+")
    kwargs = {"cnn_tile": 128} if mode == "tiled" else {"piece": int(mode.split(":")[1])} if ":" in mode else {}
    out = predict(arr, model, kernel=kernel or "auto", **kwargs)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s_per_frame": wall / frames, "peak_mb": peak_mb, "head": np.asarray(out["head_output"]).tolist(),
            "poses": np.asarray(out["poses_global"]).tolist(), "kernels": out["info"]["kernels"]}


def memory(frames_list, threads, modes):
    """Peak RSS against sweep length, each case in a fresh subprocess."""
    import numpy as np

    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"peak RSS, fp32 (mode+kernel; dualtrack-2024, or dualtrack-tusrec2025 above 1024 frames), {threads} threads, CPU: {_cpu_model()}, load: {_load()}")
    print(f"{'frames':>6} {'mode':14} {'s/frame':>8} {'peak MB':>8} {'max|dhead| vs first mode':>26} {'max corner mm':>14}")
    for n in frames_list:
        results = {}
        for mode in modes:
            cmd = [sys.executable, __file__, "--memory-case", mode, "--frames", str(n), "--threads", str(threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"memory case {mode} at {n} frames failed")
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        first = results[modes[0]]
        for mode, res in results.items():
            dh = float(np.abs(np.asarray(res["head"]) - np.asarray(first["head"])).max())
            dc = _corner_error(np.asarray(res["poses"]), np.asarray(first["poses"]))
            print(f"{n:6} {mode:14} {res['s_per_frame']:8.3f} {res['peak_mb']:8.0f} {dh:26.2e} {dc:14.2e}")
        for mode, res in results.items():
            print(f"       {mode} kernels: " + ", ".join(f"{k} {v}" for k, v in res.get("kernels", {}).items()))
    print("(peak MB: ru_maxrss in MiB, 2**20 bytes; 2.5 GB = 2384 MiB)")


def _corner_error(poses_a, poses_b, spacing=(0.229389190673828, 0.220979690551758), shape=(480, 640)):
    """Largest distance (mm) between the image corners placed by two trajectories."""
    import numpy as np

    poses_a, poses_b = np.asarray(poses_a), np.asarray(poses_b)
    h, w = shape
    xs = np.array([-(w - 1) / 2, (w - 1) / 2]) * spacing[0]
    ys = np.array([-(h - 1) / 2, (h - 1) / 2]) * spacing[1]
    corners = np.array([[x, y, 0.0, 1.0] for x in xs for y in ys])
    a = np.einsum("nij,kj->nki", poses_a, corners)[..., :3]
    b = np.einsum("nij,kj->nki", poses_b, corners)[..., :3]
    return float(np.linalg.norm(a - b, axis=-1).max())


def _load():
    try:
        return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load unknown"


def live(frames, threads, fps, checkpoint, precision, seed=5):
    """Live tracking over loopback: moved to benchmarks/bench_live_tracking.py (same options);
    ``--live`` runs it with the simulated truth and the reference trackers."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_live_tracking.py")
    subprocess.run([sys.executable, script, "--frames", str(frames), "--threads", str(threads), "--fps", str(fps),
                    "--checkpoint", checkpoint, "--precision", precision, "--seed", str(seed), "--truth"], check=True)


def precision_error(frames, threads, checkpoint, seed=5):
    """Reduced precision against fp32 on a simulated sweep: time per frame (side by side, same
    process), head difference and the distance of the image corners placed by the two trajectories."""
    import numpy as np
    import torch

    from freehand3d.simulate import simulate_freehand
    from freehand3d.tracking import load_dualtrack, predict
    from freehand3d.tracking.infer import cpu_has_fast_bf16

    torch.set_num_threads(threads)
    sweep, _ = simulate_freehand(n_frames=frames, seed=seed)
    model = load_dualtrack(checkpoint)
    out, times, cpu = {}, {}, {}
    for precision in ("fp32", "bf16", "fp32"):  # fp32 twice: its best time brackets the bf16 run
        start, c0 = time.perf_counter(), time.process_time()
        res = predict(sweep.frames, model, precision=precision, threads=threads)
        wall, c = time.perf_counter() - start, time.process_time() - c0
        out[precision] = res
        times[precision] = min(times.get(precision, float("inf")), wall / frames)
        cpu[precision] = min(cpu.get(precision, float("inf")), c / frames)
    h32, h16 = out["fp32"]["head_output"], out["bf16"]["head_output"]
    corner = _corner_error(out["bf16"]["poses_global"], out["fp32"]["poses_global"], sweep.spacing, sweep.frame_shape)
    last = _corner_error(out["bf16"]["poses_global"][-1:], out["fp32"]["poses_global"][-1:], sweep.spacing,
                         sweep.frame_shape)
    print(f"bf16 convolutions vs fp32: {checkpoint} ({model.config.name}), {frames} simulated frames, {threads} threads, "
          f"CPU: {_cpu_model()} (native bf16: {cpu_has_fast_bf16()}), {_load()}")
    print(f"s/frame fp32 {times['fp32']:.4f}, bf16 {times['bf16']:.4f} ({times['fp32'] / times['bf16']:.2f}x); "
          f"CPU-s/frame fp32 {cpu['fp32']:.4f}, bf16 {cpu['bf16']:.4f} ({cpu['fp32'] / cpu['bf16']:.2f}x)")
    print(f"head: max |d| {np.abs(h16 - h32).max():.2e} (largest fp32 value {np.abs(h32).max():.2f}); image corners: "
          f"max over frames {corner:.3f} mm, at the last frame {last:.3f} mm")


def conv_layers(frames, threads, rounds):
    """One 3x3x3 conv of each local-CNN stage (2024 widths, 256 px crops): direct (oneDNN,
    channels-last) vs Winograd F(2x2,3x3) and F(4x4,3x3), alternating, best of ``rounds`` (wall and
    CPU time per frame); error relative to a float64 conv3d."""
    import torch
    import torch.nn.functional as F

    from freehand3d.tracking.model.winograd import WinogradConv3d
    from freehand3d.tracking.model.winograd4 import Winograd4Conv3d

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"one stride-1 3x3x3 conv, {frames} frames, {threads} threads, best of {rounds}: ms/frame (CPU ms/frame), "
          f"CPU: {_cpu_model()}, {_load()}")
    print(f"{'layer':6} {'channels':>8} {'map':>8} {'direct':>14} {'F(2x2)':>14} {'F(4x4)':>14} {'F4 ratio':>8} "
          f"{'rel err direct':>14} {'F(2x2)':>8} {'F(4x4)':>8}")
    for layer, (ch, side) in enumerate([(64, 128), (128, 64), (256, 32), (512, 16)], start=1):
        conv = torch.nn.Conv3d(ch, ch, 3, padding=1).eval().to(memory_format=torch.channels_last_3d)
        fns = {"direct": conv, "F2": WinogradConv3d(conv), "F4": Winograd4Conv3d(conv)}
        x = torch.randn(1, ch, frames, side, side).to(memory_format=torch.channels_last_3d)
        best = {k: [float("inf"), float("inf")] for k in fns}
        with torch.inference_mode():
            exact = F.conv3d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            err = {k: float((fn(x).double() - exact).abs().max() / exact.abs().max()) for k, fn in fns.items()}
            for _ in range(rounds):
                for name, fn in fns.items():
                    start, cpu0 = time.perf_counter(), time.process_time()
                    fn(x)
                    best[name][0] = min(best[name][0], time.perf_counter() - start)
                    best[name][1] = min(best[name][1], time.process_time() - cpu0)
        ms = {k: (v[0] / frames * 1000, v[1] / frames * 1000) for k, v in best.items()}
        cells = " ".join(f"{ms[k][0]:6.1f} ({ms[k][1]:5.1f})" for k in fns)
        print(f"{layer:<6} {ch:8} {side:>4}x{side:<3} {cells} {ms['direct'][0] / ms['F4'][0]:7.2f}x "
              f"{err['direct']:14.1e} {err['F2']:8.1e} {err['F4']:8.1e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per case process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all cases (best kept)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--cases", default=None,
                        help="comma-separated case names to run (default: all), e.g. 'reference fp32,ours fp32'")
    parser.add_argument("--force-bf16", action="store_true", help="measure CPU bf16 even without native support")
    parser.add_argument("--conv-layers", action="store_true",
                        help="instead: one conv per local-CNN stage, direct vs Winograd (CPU, --threads)")
    parser.add_argument("--memory", type=str, default=None,
                        help="instead: peak RSS for these comma-separated sweep lengths, e.g. 64,1030")
    parser.add_argument("--memory-modes", default="stream+auto,stream+direct",
                        help="with --memory: stream / tiled (the previous 128-frame halo tiles) / stream:PIECE, "
                             "each with +KERNEL (auto = the default, direct, winograd, winograd4)")
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    parser.add_argument("--live", action="store_true",
                        help="instead: live tracking of a simulated sweep replayed over loopback (--frames, --fps)")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--precision-error", action="store_true",
                        help="instead: bf16 vs fp32 speed and pose error on a simulated sweep (--checkpoint, --frames)")
    parser.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "freehand3d", "data",
                                                              "dualtrack-tiny.pt"))
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--on", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.conv_layers:
        conv_layers(min(args.frames, 16), args.threads, max(args.rounds, 3))
        return
    if args.precision_error:
        precision_error(args.frames, args.threads, args.checkpoint)
        return
    if args.live:
        live(args.frames, args.threads, args.fps, args.checkpoint, args.precision)
        return
    if args.memory_case:
        print(json.dumps(memory_case(args.frames, args.threads, args.memory_case)))
        return
    if args.memory:
        memory([int(v) for v in args.memory.split(",")], args.threads, args.memory_modes.split(","))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.frames, args.on, args.threads, args.repeat)))
        return

    import numpy as np
    import torch

    from freehand3d.tracking.infer import cpu_has_fast_bf16

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else ["cpu"]
    if args.device == "all" and torch.cuda.is_available():
        devices.append("cuda")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows = []
    for device in devices:
        results = {}
        skipped = []
        # cases alternate over the rounds, so a load change on a shared machine hits all of them
        chosen = [c.strip() for c in args.cases.split(",")] if args.cases else list(CASES)
        unknown = [c for c in chosen if c not in CASES]
        if unknown or "reference fp32" not in chosen:
            raise SystemExit(f"--cases: unknown {unknown} (known: {', '.join(CASES)}); 'reference fp32' is required")
        for _ in range(args.rounds):
            for name in chosen:
                if device != "cpu" and CASES[name].get("cpu_only"):
                    continue  # Winograd is a CPU path: on CUDA both rows would be the same run
                if device == "cpu" and CASES[name]["amp"] and not (args.force_bf16 or cpu_has_fast_bf16()):
                    # without AVX512-BF16/AMX oneDNN runs bf16 convs in reference code (~50x slower)
                    if name not in skipped:
                        skipped.append(name)
                    continue
                cmd = [sys.executable, __file__, "--case", name, "--on", device, "--frames", str(args.frames),
                       "--threads", str(args.threads), "--repeat", str(args.repeat)]
                out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    raise SystemExit(f"case {name!r} on {device} failed")
                res = json.loads(out.stdout.strip().splitlines()[-1])
                if name not in results or res["s_per_frame"] < results[name]["s_per_frame"]:
                    results[name] = res
        ref = results["reference fp32"]
        for name in skipped:
            rows.append((device, name.replace("autocast", "bf16 convs"), None, None, None, None))
        ref_head = np.asarray(ref["head"])
        for name, res in results.items():
            label = name.replace("autocast", "bf16 convs")
            diff = float(np.abs(np.asarray(res["head"]) - ref_head).max() / np.abs(ref_head).max())
            rows.append((device, label, res["s_per_frame"], res["peak_mb"], ref["s_per_frame"] / res["s_per_frame"], diff,
                         res["cpu_s_per_frame"], ref["cpu_s_per_frame"] / res["cpu_s_per_frame"]))
    print(f"DualTrack dualtrack-2024 forward, {args.frames} frames, {args.threads} CPU threads, torch {torch.__version__}, "
          f"CPU: {_cpu_model()}, {_load()} (at the end)" + (f", GPU: {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    header = (f"{'device':6} {'case':24} {'s/frame':>9} {'peak MB':>9} {'vs reference':>12} {'vs 0.36 s':>10} "
              f"{'rel max|dhead|':>15} {'CPU-s/frame':>12} {'CPU vs ref':>10}")
    print(header)
    print("-" * len(header))
    for device, label, spf, peak, ratio, diff, *cpu in rows:
        if spf is None:
            print(f"{device:6} {label:24} skipped: no native bf16 on this CPU (--force-bf16 to measure)")
            continue
        vs_official = f"{OFFICIAL_CPU_S_PER_FRAME / spf:9.2f}x" if device == "cpu" else f"{'-':>10}"
        print(f"{device:6} {label:24} {spf:9.4f} {peak:9.0f} {ratio:11.2f}x {vs_official} {diff:15.2e} "
              f"{cpu[0]:12.4f} {cpu[1]:9.2f}x")
    print(f"(official DualTrack code on the project CPU, as reported in the issue: ~{OFFICIAL_CPU_S_PER_FRAME} s/frame; "
          "CUDA goal: <= 0.25 s for a 546-frame sweep on an H100)")


if __name__ == "__main__":
    main()
