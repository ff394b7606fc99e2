"""Benchmark: the uint8 compounding path of two source trees side by side, in one run (issue 14:
"speed of the uint8 path unchanged"), plus the non-uint8 pixel types on the newer tree.

Each measurement is a fresh subprocess with ``PYTHONPATH`` set to one tree; the trees alternate
(A B A B ...) so that a change of machine load hits both alike. Timing is CPU time
(``time.process_time``) of the numba kernels with one thread, after a warm-up call, on the sweep of
bench_compound.py (480 x 640 frames, ~5 Mvoxel grid at 0.5 mm).

    git worktree add --detach /tmp/before <old commit>
    python benchmarks/bench_compound_ab.py --before /tmp/before --after . [--frames 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
import numba, numpy as np
numba.set_num_threads(1)
sys.path.insert(0, sys.argv[1])
from bench_compound import make_sweep
from freehand3d.compound import OutputGrid, Reconstructor
from freehand3d.compound.volume import grid_from_frames
frames, mats = make_sweep(int(sys.argv[2]))
grid = grid_from_frames(mats, frames.shape[1:], (0.5, 0.5, 0.5))
out = {}
for dtype in json.loads(sys.argv[3]):
    typed = frames if dtype == "uint8" else (frames.astype(dtype) * (257 if dtype == "uint16" else 1))
    for method in ("nearest", "linear"):
        for mode in ("latest", "max", "mean"):
            for exact in ((False, True) if dtype == "uint8" else (False,)):
                kw = {} if dtype == "uint8" else {"pixel_type": dtype}
                Reconstructor(grid, method, mode, exact_plus=exact, **kw).add_frames(typed[:2], mats[:2])  # compile / load
                rec = Reconstructor(grid, method, mode, exact_plus=exact, **kw)
                start = time.process_time()
                rec.add_frames(typed, mats)
                out[f"{dtype} {method} {mode} {'exact' if exact else 'fast'}"] = len(frames) / (time.process_time() - start)
print(json.dumps(out))
"""


def _run(tree: Path, bench_dir: Path, frames: int, dtypes: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(bench_dir), str(frames), json.dumps(dtypes)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="source tree of the old code")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_dir = Path(__file__).resolve().parent
    before, after = {}, {}
    for _ in range(args.repeats):
        for tree, store, dtypes in ((args.before, before, ["uint8"]), (args.after, after, ["uint8", "uint16", "float32"])):
            for key, fps in _run(tree.resolve(), bench_dir, args.frames, dtypes).items():
                store.setdefault(key, []).append(fps)
    print(f"{args.frames} frames 480x640, 1 thread, CPU-time frames/s (median of {args.repeats}, trees alternating)")
    print(f"{'uint8 path':34} {'before':>9} {'after':>9} {'after/before':>13}")
    for key in before:
        b, a = statistics.median(before[key]), statistics.median(after[key])
        print(f"{key:34} {b:9.1f} {a:9.1f} {a / b:13.3f}")
    print(f"\n{'other pixel types (after)':34} {'frames/s':>9} {'vs uint8 fast':>13}")
    for key, values in after.items():
        if key.startswith("uint8"):
            continue
        ref = statistics.median(after["uint8 " + key.split(" ", 1)[1]])
        print(f"{key:34} {statistics.median(values):9.1f} {statistics.median(values) / ref:13.3f}")


if __name__ == "__main__":
    main()
