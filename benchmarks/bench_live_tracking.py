"""Live DualTrack tracking of a replayed sweep: latency, frames skipped, live vs offline.

What runs is what ``freehand3d stream --track CKPT`` runs: ``freehand3d replay`` (a subprocess,
the PLUS-style OpenIGTLink server) sends a simulated 480 x 640 sweep over loopback at ``--fps``;
:func:`freehand3d.stream.live.run_live` receives it with the real
:class:`~freehand3d.stream.igtl.IGTLSource` and hands every frame to the tracking stage
(:class:`~freehand3d.tracking.live.TrackingConsumer` + :class:`LiveTracker`).

Printed:

* frames sent / received / tracked, skipped (sent - tracked), stage drops;
* latency from frame arrival (``StreamItem.received``, when the receiver read the message) to the
  pose being emitted: p50 / p95 / max, and where it goes (receiver -> tracking thread, queued,
  the CNN step); and from arrival to the first *refined* pose that saw the frame's own pixels;
* CPU time of the arrival path (the thread that runs the incremental CNN and emits the poses) per
  frame, the refinements (count, CPU time each) and how far the emitted poses were continued past
  the newest refinement; the process's CPU use and the load average (wall-clock latency depends on
  what else the machine runs; the CPU-ms columns much less);
* the poses emitted on arrival and the final live trajectory against the offline
  :func:`~freehand3d.tracking.predict` on the same frames: GPE (all 307,200 pixels) and GPE_5pt
  in mm, and the largest image-corner distance;
* the *causal optimum* -- the offline model on the sweep cut after each frame, what ``refine="sync"``
  emits at O(N) per frame -- against the offline trajectory (what the model's look-ahead costs any
  live use) and the emitted poses against it (what continuing the newest refinement costs);
* with ``--truth``: every trajectory (and the reference trackers) against the simulator's truth.

``--full-model-cost`` instead measures what one frame of the full ``dualtrack-2024`` network
(~100 M parameters, random weights) costs on the arrival path -- the incremental local CNN plus the
global CNN amortised over 16 frames -- at 1 and 2 threads, against the 33 ms a 30 fps stream allows.

Usage::

    python benchmarks/bench_live_tracking.py                       # 330 frames at 30 fps, tiny checkpoint
    python benchmarks/bench_live_tracking.py --refine sync         # the previous behaviour (O(N) per frame)
    python benchmarks/bench_live_tracking.py --full-model-cost

The simulated sweep is cached under ``.benchmarks-cache/live/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = HERE.parent / "freehand3d" / "data" / "dualtrack-tiny.pt"


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    bf16 = ", native bf16" if "avx512_bf16" in flags or "amx_bf16" in flags else ", no native bf16"
    return f"{fields.get('Model name', 'unknown CPU').strip()} ({isa}{bf16}), {os.cpu_count()} CPUs"


def load() -> str:
    try:
        return "load average " + ", ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "load unknown"


def simulated_sweep(frames: int, seed: int, cache: Path):
    """(path of the .igs.mha, sweep, truth ImageToReference) -- simulated once, then cached."""
    import numpy as np

    from freehand3d.io import read_sweep, write_sweep
    from freehand3d.simulate import simulate_freehand

    cache.mkdir(parents=True, exist_ok=True)
    path, truth_path = cache / f"sweep-{frames}-{seed}.igs.mha", cache / f"truth-{frames}-{seed}.npy"
    if path.exists() and truth_path.exists():
        return path, read_sweep(path), np.load(truth_path)
    sweep, truth = simulate_freehand(n_frames=frames, seed=seed)
    write_sweep(sweep, path)
    np.save(truth_path, truth["image_to_reference"])
    return path, read_sweep(path), truth["image_to_reference"]


def _corner_distance(a, b, spacing, shape):
    """Largest distance (mm) between the image corners placed by two DualTrack-frame trajectories."""
    import numpy as np

    h, w = shape
    xs = np.array([-(w - 1) / 2, (w - 1) / 2]) * spacing[0]
    ys = np.array([-(h - 1) / 2, (h - 1) / 2]) * spacing[1]
    corners = np.array([[x, y, 0.0, 1.0] for x in xs for y in ys])
    pa = np.einsum("nij,kj->nki", a, corners)[..., :3]
    pb = np.einsum("nij,kj->nki", b, corners)[..., :3]
    return float(np.linalg.norm(pa - pb, axis=-1).max())


def live(args) -> dict:
    import numpy as np
    import torch

    from freehand3d.stream.igtl import IGTLSource
    from freehand3d.stream.live import run_live
    from freehand3d.tracking import load_dualtrack, predict
    from freehand3d.tracking.infer import pixel_to_image
    from freehand3d.tracking.live import LiveTracker, refined_latencies, tracking_stage
    from freehand3d.tracking.workflows import evaluate_poses

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    path, sweep, truth = simulated_sweep(args.frames, args.seed, Path(args.cache))
    sim_s = time.perf_counter() - t0
    shape, spacing = sweep.frame_shape, sweep.spacing
    model = load_dualtrack(args.checkpoint)
    t0 = time.perf_counter()
    offline = predict(sweep.frames, model, precision=args.precision, threads=args.threads)["poses_global"]
    offline_s = time.perf_counter() - t0
    tracker = LiveTracker(model, precision=args.precision, threads=args.threads, spacing=spacing,
                          refine=args.refine, velocity_frames=args.velocity_frames, refine_nice=args.nice)
    stage, consumer = tracking_stage(tracker)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "freehand3d", "replay", str(path), "--port", str(port),
                               "--fps", str(args.fps), "--accept-timeout", "60"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    load_before = load()
    try:
        cpu0, wall0 = os.times(), time.perf_counter()
        source = IGTLSource(port=port, reconnect=False, connect_timeout=60.0)
        result = run_live(source, consumers=[stage], max_frames=args.frames, drain_timeout=600.0)
        cpu1, wall1 = os.times(), time.perf_counter()
    finally:
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    load_after = load()
    final = tracker.trajectory()  # the stage's finish() ran consumer.close() -> tracker.finish()
    c_inv = np.linalg.inv(pixel_to_image(shape, spacing))
    emitted = np.stack(tracker.emitted) @ c_inv
    final_poses = final @ c_inv
    lat = np.array(consumer.latencies_s) * 1e3
    st = tracker.stats()
    tracked = len(tracker.emitted)
    proc_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    vs_off = evaluate_poses(emitted, offline, spacing, shape)
    fin_off = evaluate_poses(final_poses, offline, spacing, shape)
    stage_stats = {s["name"]: s for s in result.stages}["tracking"]

    print(f"live tracking: {args.frames} simulated 480x640 frames replayed at {args.fps:g} fps by `freehand3d replay` "
          f"over loopback, received by run_live (the `stream --track` path)")
    print(f"model {Path(args.checkpoint).name} ({model.config.name}), precision {tracker.precision}, torch threads "
          f"{args.threads}, refine={args.refine}, velocity_frames={args.velocity_frames}, refine nice "
          f"+{args.nice}; torch {torch.__version__}")
    print(f"CPU: {cpu_model()}; {load_before} before, {load_after} after")
    print(f"(simulation {sim_s:.1f} s incl. cache, offline predict {offline_s:.1f} s = "
          f"{offline_s / args.frames * 1e3:.0f} ms/frame wall)")
    print(f"frames: received {result.frames}/{args.frames} in {result.seconds:.1f} s ({result.fps:.1f} fps), "
          f"tracked {tracked}, skipped {args.frames - tracked}; stage dropped {stage_stats['dropped']} + "
          f"{stage_stats['dropped_at_exit']} at exit; missed {result.stats.get('missed', 0)}")
    print(f"latency arrival -> pose: p50 {np.percentile(lat, 50):.1f} ms, p95 {np.percentile(lat, 95):.1f} ms, "
          f"max {lat.max():.1f} ms (frame {int(lat.argmax())}); batches: mean {np.mean(consumer.batches):.2f}, max {max(consumer.batches)} frames")
    tm = np.array(consumer.timings) * 1e3
    parts = {"receiver -> tracking consumer": tm[:, 1] - tm[:, 0], "queued in the consumer": tm[:, 2] - tm[:, 1],
             "push_many (CNN step + pose)": tm[:, 3] - tm[:, 2]}
    print("  where it goes (p50 / p95 ms): " + "; ".join(
        f"{name} {np.percentile(v, 50):.1f} / {np.percentile(v, 95):.1f}" for name, v in parts.items()))
    ref_lat = refined_latencies(tm[:, 0] / 1e3, tracker.published) * 1e3
    seen = ref_lat[np.isfinite(ref_lat)]
    print(f"latency arrival -> first refined pose that saw the frame: p50 {np.percentile(seen, 50):.0f} ms, "
          f"p95 {np.percentile(seen, 95):.0f} ms, max {seen.max():.0f} ms ({len(ref_lat) - len(seen)} frames "
          f"first seen by finish())")
    print(f"arrival path: {st['arrival_cpu_ms_per_frame']:.1f} CPU-ms/frame (CNN step + pose); refinements: "
          f"{st['refinements']} ({st['refine_cpu_ms_mean']:.0f} CPU-ms each, mean); emitted poses continued "
          f"{st['horizon_mean']:.1f} frames past the newest refinement on average, max {st['horizon_max']}")
    print(f"process CPU during the stream: {proc_cpu:.1f} s over {wall1 - wall0:.1f} s wall "
          f"({proc_cpu / (wall1 - wall0):.2f} cores busy on average)")
    print(f"poses emitted on arrival vs offline: GPE {vs_off['GPE']:.3f} mm, GPE_5pt {vs_off['GPE_5pt']:.3f} mm, "
          f"LPE {vs_off['LPE']:.3f} mm, largest corner distance "
          f"{_corner_distance(emitted, offline, spacing, shape):.3f} mm")
    print(f"final live trajectory vs offline: GPE {fin_off['GPE']:.2e} mm, GPE_5pt {fin_off['GPE_5pt']:.2e} mm, "
          f"largest corner distance {_corner_distance(final_poses, offline, spacing, shape):.2e} mm")
    causal = None
    if not args.no_causal:
        # the best any causal tracker built on this model can emit: the offline model on the sweep
        # cut after each frame (what refine="sync" emits, at O(N) per frame); not timed
        sync = LiveTracker(model, precision=args.precision, threads=args.threads, spacing=spacing, refine="sync")
        for frame in sweep.frames:
            sync.push(frame)
        sync.close()
        causal = np.stack(sync.emitted) @ c_inv
        c_off = evaluate_poses(causal, offline, spacing, shape)
        e_c = evaluate_poses(emitted, causal, spacing, shape)
        print(f"causal optimum (offline model cut after each frame = refine=sync) vs offline: GPE {c_off['GPE']:.3f} mm, "
              f"GPE_5pt {c_off['GPE_5pt']:.3f} mm; emitted vs causal optimum (the cost of continuing the "
              f"newest refinement): GPE {e_c['GPE']:.3f} mm, GPE_5pt {e_c['GPE_5pt']:.3f} mm")
    if args.truth:
        from freehand3d.tracking import baselines

        gt = truth @ c_inv
        gt = np.linalg.inv(gt[0])[None] @ gt
        rows = [("DualTrack offline", offline), ("DualTrack live, on arrival", emitted),
                ("DualTrack live, final", final_poses)]
        if causal is not None:
            rows.insert(2, ("DualTrack causal optimum", causal))
        for name, fn in baselines.BASELINES.items():
            rows.append((name, fn(sweep) @ c_inv))
        print(f"{'tracker vs simulated truth':30} {'GPE mm':>8} {'LPE mm':>8} {'elev. err mm':>13} {'final drift mm':>15}")
        for name, poses in rows:
            m = evaluate_poses(poses, gt, spacing, shape)
            elev = float(np.abs(poses[:, 2, 3] - gt[:, 2, 3]).mean())
            print(f"{name:30} {m['GPE']:8.3f} {m['LPE']:8.3f} {elev:13.3f} {m['final_drift_mm']:15.3f}")
    return {"p95_ms": float(np.percentile(lat, 95)), "skipped": args.frames - tracked,
            "final_vs_offline_gpe": fin_off["GPE"]}


def full_model_cost(args) -> None:
    """Arrival-path cost of one frame of the full dualtrack-2024 network (random weights)."""
    import numpy as np
    import torch

    from freehand3d.tracking import DualTrack
    from freehand3d.tracking.infer import inference_cnns
    from freehand3d.tracking.model.streaming import StreamingCNN
    from freehand3d.tracking.preprocess import global_frames, local_crops

    model = DualTrack("dualtrack-2024").eval()
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 480, 640), dtype=np.uint8)
    print(f"full model ({cfg.name}, {n_params / 1e6:.0f} M parameters, random weights): arrival-path cost of one "
          f"frame (incremental local CNN + 1/{cfg.global_stride} of a global-CNN frame), fp32, kernel "
          f"{args.kernel}; CPU: {cpu_model()}; {load()}")
    print(f"{'threads':>7} {'local CNN ms/frame':>19} {'CPU-ms':>8} {'global CNN ms/frame':>20} {'total ms':>9} "
          f"{'max fps':>8}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        local_cnn, global_cnn, _, _ = inference_cnns(model, "cpu", "fp32", torch.float32, args.kernel, threads)
        with torch.inference_mode():
            stream = StreamingCNN(local_cnn)
            clips = [local_crops(frames[i:i + 1], cfg.local_size)[None].transpose(1, 2) for i in range(len(frames))]
            stream.push(clips[0])
            stream.push(clips[1])  # carries filled: every later push is one frame of work
            walls, cpus = [], []
            for clip in clips[2:]:
                t0, c0 = time.perf_counter(), time.process_time()
                stream.push(clip)
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            g = global_frames(frames[:1], cfg.global_variant, cfg.global_norm, cfg.global_size)[None]
            model.global_encoder.frame_features(g, cnn=global_cnn)
            t0 = time.perf_counter()
            model.global_encoder.frame_features(g, cnn=global_cnn)
            g_wall = time.perf_counter() - t0
        local_ms, local_cpu = min(walls) * 1e3, min(cpus) * 1e3
        total = local_ms + g_wall * 1e3 / cfg.global_stride
        print(f"{threads:7} {local_ms:19.0f} {local_cpu:8.0f} {g_wall * 1e3:20.0f} {total:9.0f} {1e3 / total:8.2f}")
    print("a 30 fps stream allows 33 ms per frame on the arrival path (best of 6 single-frame pushes)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=330)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (each tracking thread)")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--refine", default="background", choices=["background", "sync"])
    parser.add_argument("--velocity-frames", type=int, default=8)
    parser.add_argument("--nice", type=int, default=10, help="niceness of the refinement thread")
    parser.add_argument("--checkpoint", default=str(TINY))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--cache", default=".benchmarks-cache/live")
    parser.add_argument("--no-causal", action="store_true",
                        help="skip the causal optimum (the model cut after each frame, ~50-100 ms per frame)")
    parser.add_argument("--truth", action="store_true", help="also score everything against the simulated truth")
    parser.add_argument("--full-model-cost", action="store_true",
                        help="instead: per-frame arrival-path cost of the full dualtrack-2024 network")
    parser.add_argument("--kernel", default="direct", help="with --full-model-cost: local-CNN kernels")
    args = parser.parse_args()
    if args.full_model_cost:
        full_model_cost(args)
    else:
        live(args)


if __name__ == "__main__":
    main()
