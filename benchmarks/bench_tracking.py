"""DualTrack inference speed and peak memory, side by side in one run.

Rows (each measured in its own subprocess, so peak memory is per case):

* ``reference fp32``: the plain eager forward of the same network -- ``model(local, global)``
  under ``torch.no_grad`` on the whole preprocessed sweep at once, textbook attention
  (softmax(QK^T/sqrt(d) + bias) V), default memory layout. This is how a straightforward
  implementation (and the official code) runs it.
* ``ours fp32``: :func:`freehand3d.tracking.predict` -- inference mode, fused
  scaled-dot-product attention, channels-last convolutions, local CNN in halo tiles, crops made
  per tile.
* ``ours bf16-autocast`` (CPU) / ``ours fp16-autocast`` (CUDA): the same with ``amp=True``.

Columns: seconds per frame (best over ``--rounds`` alternating rounds x ``--repeat`` runs), peak resident memory of the process (CPU) or
peak allocated GPU memory (CUDA), speed-up relative to the reference on the same device, and
max |difference| of the head output from the reference fp32 output (same random weights).

Usage::

    python benchmarks/bench_tracking.py                 # 64 frames, 2 threads, CPU (+ CUDA if present)
    python benchmarks/bench_tracking.py --frames 16 --repeat 1

The issue reports about 0.36 s/frame for the official code on the project's CPU (not measured here).
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
    "ours fp32": dict(impl="ours", amp=False),
    "ours autocast": dict(impl="ours", amp=True),
}


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
    times, head = [], None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if case["impl"] == "reference":
            attention.USE_FUSED_ATTENTION = False
            local, glob = preprocess(arr, device=device)
            with torch.no_grad():
                head = model(local, glob)["head_output"][0].double().cpu().numpy()
        else:
            attention.USE_FUSED_ATTENTION = True
            head = predict(arr, model, device=device, amp=case["amp"])["head_output"]
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"s_per_frame": min(times) / frames, "peak_mb": peak_mb, "head": np.asarray(head).tolist()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per case process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of all cases (best kept)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--force-bf16", action="store_true", help="measure CPU bf16 even without native support")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    parser.add_argument("--on", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()

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
        for _ in range(args.rounds):
            for name in CASES:
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
            rows.append((device, name.replace("autocast", "bf16-autocast"), None, None, None, None))
        for name, res in results.items():
            label = name.replace("autocast", "bf16-autocast" if device == "cpu" else "fp16-autocast")
            rows.append(
                (device, label, res["s_per_frame"], res["peak_mb"], ref["s_per_frame"] / res["s_per_frame"],
                 float(np.abs(np.asarray(res["head"]) - np.asarray(ref["head"])).max()))
            )
    print(f"DualTrack dualtrack-2024 forward, {args.frames} frames, {args.threads} CPU threads, torch {torch.__version__}")
    header = f"{'device':6} {'case':22} {'s/frame':>9} {'peak MB':>9} {'speed-up':>9} {'max|dhead|':>11}"
    print(header)
    print("-" * len(header))
    for device, label, spf, peak, ratio, diff in rows:
        if spf is None:
            print(f"{device:6} {label:22} skipped: no native bf16 on this CPU (--force-bf16 to measure)")
            continue
        print(f"{device:6} {label:22} {spf:9.4f} {peak:9.0f} {ratio:8.2f}x {diff:11.2e}")
    print("(official DualTrack code on the project CPU, as reported in the issue: ~0.36 s/frame)")


if __name__ == "__main__":
    main()
