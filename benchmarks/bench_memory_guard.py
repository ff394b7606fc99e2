"""Memory guard of ``reconstruct`` against measured peaks.

Each point of a grid (spacing x method x compounding x hole filler x exact/fast) runs in a fresh
process: read the bundled spine sweep with ImageToProbe from PLUS's NN_LATE device set (the grid follows
the frames, PLUS's rule), warm the
numba kernels on a coarse grid, take the RSS as baseline, then reconstruct and write the volume (what
the CLI does) and take the peak RSS (``ru_maxrss``). The measured peak above the baseline is
compared with :func:`freehand3d.compound.volume.memory_budget` for the same request.

    python benchmarks/bench_memory_guard.py            # the grid, a table; exit 1 if a peak exceeds its budget by > 15 %
    python benchmarks/bench_memory_guard.py --quick    # 2 spacings, a few combinations

Keep each point under ~3 GiB on the shared build machine: the finest spacing here is 0.2 mm
(25 Mvoxel; the gap fill's fallback peaks at 1.5 GiB there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUS = ROOT / "freehand3d" / "data" / "plus"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(spacing: float, method: str, compounding: str, fill: str, exact: bool) -> dict:
    from freehand3d.compound.holes import parse_fill_spec
    from freehand3d.compound.volume import memory_budget, reconstruct, write_volume_file
    from freehand3d.io import read_sweep

    from freehand3d.io.plus_config import read_device_set

    config = PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml"
    sweep = read_sweep(PLUS / "SpinePhantomFreehand.igs.mha")
    sweep.image_to_probe = read_device_set(config).transform("ImageToProbe")  # the grid follows the frames
    kernels = [] if fill == "none" else parse_fill_spec(fill)
    kw = dict(method=method, compounding=compounding, fill_holes=kernels, exact_plus=exact)
    reconstruct(sweep, spacing=3.0, **kw)  # compile / load the kernels, warm the allocator
    baseline = _rss()
    t0 = time.perf_counter()
    budget = {}
    image = reconstruct(sweep, spacing=spacing, budget_out=budget, **kw)
    with tempfile.TemporaryDirectory() as d:
        write_volume_file(image, Path(d) / "v.nrrd")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = 1
    for s in image.GetSize():
        n *= s
    return {"spacing": spacing, "method": method, "compounding": compounding, "fill": fill, "exact": exact,
            "voxels": n, "baseline": baseline, "peak": peak - baseline, "budget": budget["bytes"],
            "check_budget": memory_budget(n, method, compounding, exact, "numba", kernels), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    if args.child:
        s, m, c, f, e = args.child
        print(json.dumps(child(float(s), m, c, f, e == "1")))
        return
    spacings = (0.5, 0.3) if args.quick else (0.5, 0.3, 0.2)
    combos = [("nearest", "mean", "none", False), ("nearest", "mean", "none", True), ("nearest", "latest", "none", True),
              ("linear", "max", "none", False), ("linear", "mean", "none", False)]
    combos += [("nearest", "mean", f, False) for f in ("gaussian:3:1", "gaussian_accumulation:3:1", "nn:3", "idw:3", "stick:9", "gap:2")]
    combos += [("nearest", "latest", f, True) for f in ("stick:9", "gap:2")]
    if args.quick:
        combos = combos[:2] + combos[-2:]
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"CPU: {cpu}; load: {os.getloadavg()[0]:.2f}; {len(combos) * len(spacings)} points")
    print(f"| spacing mm | Mvoxel | method | compounding | hole filling | exact | measured MiB | budget MiB | budget/measured |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows, worst = [], 0.0
    for spacing in spacings:
        for m, c, f, e in combos:
            proc = subprocess.run([sys.executable, __file__, "--child", str(spacing), m, c, f, "1" if e else "0"],
                                  capture_output=True, text=True, timeout=900,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            if proc.returncode != 0:
                print(f"| {spacing} | - | {m} | {c} | {f} | {e} | failed: {proc.stderr.strip().splitlines()[-1][:80]} |")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            ratio = row["budget"] / max(row["peak"], 1)
            worst = max(worst, abs(ratio - 1))
            print(f"| {spacing} | {row['voxels'] / 1e6:.1f} | {m} | {c} | {f} | {'yes' if e else 'no'} | "
                  f"{row['peak'] / 2**20:.0f} | {row['budget'] / 2**20:.0f} | {ratio:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    ratios = [r["budget"] / max(r["peak"], 1) for r in rows]
    within = sum(0.85 <= x <= 1.15 for x in ratios)
    print(f"{within} of {len(rows)} points within 15 %; budget/measured {min(ratios):.2f} .. {max(ratios):.2f}")
    # the guard must never let a request exceed its budget by more than 15 % (over-budget is safe)
    sys.exit(0 if min(ratios) * 1.15 >= 1.0 else 1)


if __name__ == "__main__":
    main()
