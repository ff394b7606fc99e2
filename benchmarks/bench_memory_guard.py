"""Memory guard of ``reconstruct`` against measured peaks.

Each point of a grid (spacing x method x compounding x hole filler x exact/fast) runs in a fresh
process: read the bundled spine sweep with ImageToProbe from PLUS's NN_LATE device set (the grid
follows the frames, PLUS's rule; no config, so every 820x616 pixel is pasted), run the same request on
a coarse 3 mm grid and write it (code loaded, kernels compiled), collect garbage and ``malloc_trim``
(free heap pages go back to the system, so the baseline is the memory in use), take VmRSS as the
baseline and reset the peak (``/proc/self/clear_refs`` 5: the peak of reading the sweep does not
count), then reconstruct and write the volume (what the CLI does) and read the peak (VmHWM). The
peak above the baseline is compared with the budget the guard checked
(:func:`freehand3d.compound.volume.memory_terms`: the largest phase's live buffers + FIXED_BYTES).

    python benchmarks/bench_memory_guard.py            # the grid, a table; exit 1 unless every point is within 15 %
    python benchmarks/bench_memory_guard.py --quick    # 2 spacings, a few combinations

Keep each point under ~3 GiB on the shared build machine: the finest spacing here is 0.2 mm
(25 Mvoxel; the gap fill's distance transform peaks at 1.5 GiB there).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUS = ROOT / "freehand3d" / "data" / "plus"


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM, RssAnon, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    """Start a new peak: VmHWM := VmRSS (Linux >= 4.0, ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(spacing: float, method: str, compounding: str, fill: str, exact: bool) -> dict:
    from freehand3d.compound.holes import parse_fill_spec
    from freehand3d.compound.volume import memory_budget, reconstruct, write_volume_file
    from freehand3d.io import read_sweep

    from freehand3d.io.plus_config import read_device_set

    config = PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml"
    sweep = read_sweep(PLUS / "SpinePhantomFreehand.igs.mha")
    sweep.image_to_probe = read_device_set(config).transform("ImageToProbe")  # the grid follows the frames
    kernels = [] if fill == "none" else parse_fill_spec(fill)
    frame_pixels = int(np.prod(sweep.frame_shape))  # no config: every pixel is pasted
    kw = dict(method=method, compounding=compounding, fill_holes=kernels, exact_plus=exact)
    with tempfile.TemporaryDirectory() as d:  # the same work on a coarse grid: code loaded, kernels compiled
        write_volume_file(reconstruct(sweep, spacing=3.0, **kw), Path(d) / "v.nrrd")
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # free heap pages go back: the baseline is what is in use
    baseline = _status("VmRSS")
    _reset_peak()  # the peak of reading the sweep and of the warm-up must not count
    t0 = time.perf_counter()
    budget = {}
    image = reconstruct(sweep, spacing=spacing, budget_out=budget, **kw)
    with tempfile.TemporaryDirectory() as d:
        write_volume_file(image, Path(d) / "v.nrrd")
    seconds = time.perf_counter() - t0
    peak = _status("VmHWM")
    n = 1
    for s in image.GetSize():
        n *= s
    return {"spacing": spacing, "method": method, "compounding": compounding, "fill": fill, "exact": exact,
            "voxels": n, "baseline": baseline, "peak": peak - baseline, "budget": budget["bytes"],
            "check_budget": memory_budget(n, method, compounding, exact, "numba", kernels, shape=image.GetSize()[::-1],
                                          spacing=image.GetSpacing(), frame_pixels=frame_pixels),
            "frame_pixels": frame_pixels, "shape": image.GetSize()[::-1], "seconds": seconds}


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
    print(f"CPU: {cpu}; load: {os.getloadavg()[0]:.2f}; {len(combos) * len(spacings)} points; "
          f"{os.cpu_count()} CPUs, numba threads {os.environ.get('NUMBA_NUM_THREADS', 'default')}")
    print("| spacing mm | Mvoxel | method | compounding | hole filling | exact | measured MiB | budget MiB | budget/measured |")
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
    from freehand3d.compound.volume import FIXED_BYTES

    # the fit of the one free constant: what each point leaves for FIXED_BYTES beyond the counted buffers
    implied = [(r["peak"] - (r["budget"] - FIXED_BYTES)) / 2**20 for r in rows]
    print(f"{within} of {len(rows)} points within 15 %; budget/measured {min(ratios):.3f} .. {max(ratios):.3f}; "
          f"peak minus counted buffers {min(implied):.1f} .. {max(implied):.1f} MiB (FIXED_BYTES = {FIXED_BYTES / 2**20:g} MiB)")
    sys.exit(0 if rows and within == len(rows) and len(rows) == len(combos) * len(spacings) else 1)


if __name__ == "__main__":
    main()
