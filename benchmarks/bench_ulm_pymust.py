"""G-ULM vs DAS + WA on RF data from an independent simulator (PyMUST SIMUS), under realistic noise.

Grid: two probes (L11-5v-like: 128 el., 0.3 mm pitch, 7.6 MHz; L22-14v-like: 128 el., 0.1 mm pitch,
15.625 MHz), plane waves at 0 and 5 degrees, two bubble densities, and in-band SNR noiseless / 40 /
30 / 20 / 10 dB plus noise-only frames. Noise: the G-ULM authors' shape (white Gaussian noise
smoothed by a 2-D Gaussian of 1.5 samples x channels) scaled per frame to the in-band SNR
20 log10(max|B rf| / std(B noise)), B the receive band-pass (``freehand3d.simulate.rf.add_noise_snr``).

Methods: G-ULM with 128 and 16 channels (default, derived parameters; pulse from the file, as
``ulm simulate --backend pymust`` stores it) and DAS + WA with 128 channels, all on the same frames in
the same run; G-ULM 128 also without a pulse (estimated from the data). Scores: ours (one-to-one
pairing) Jaccard and error in lambda/10, and PALA's (greedy) Jaccard; wall seconds per frame.

Noiseless RF is simulated once per (probe, angle, density, frames, seed) and cached outside git
(default .benchmarks-cache/ulm-pymust, git-ignored, or --cache); noise is added on the fly (seeded).

    python benchmarks/bench_ulm_pymust.py                       # the full grid (about 15 min on 2 cores)
    python benchmarks/bench_ulm_pymust.py --quick               # L11-5v-like, 0 deg, 30 and 20 dB only
    python benchmarks/bench_ulm_pymust.py --json out.json
    # the ordering table: 40 frames per cell (seeds 0-3), both densities at 30 and 20 dB
    python benchmarks/bench_ulm_pymust.py --seeds 0,1,2,3 --snr 30,20 --dense-snr 30,20 --methods "G-ULM 128,DAS+WA 128"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from freehand3d.simulate.rf import add_noise_snr, reference_pulse, simulate_bubbles, simulate_rf
from freehand3d.ulm.baseline import localize_das_wa
from freehand3d.ulm.metrics import evaluate
from freehand3d.ulm.pipeline import localize
from freehand3d.ulm.probe import LinearProbe

PROBES = {
    # Verasonics L11-5v: 128 elements, 0.3 mm pitch, 7.6 MHz (PyMUST's getparam values), fs = 4 fc
    "L11-5v": (LinearProbe(pitch=0.3, element_width=0.27, center_frequency=7.6e6, sampling_frequency=30.4e6, fractional_bandwidth=0.77), (-10.0, 10.0), (6.0, 20.0)),
    # Verasonics L22-14v (PALA's in-silico probe): 128 elements, 0.1 mm pitch, 15.625 MHz, fs = 4 fc
    "L22-14v": (LinearProbe(), (-5.0, 5.0), (4.0, 10.0)),
}


def dataset(cache: Path, probe_name: str, angle_deg: float, bubbles: float, frames: int, seed: int):
    """(noiseless rf, list_pos, pulse) from the cache, simulated with PyMUST on a miss."""
    probe, x_range, z_range = PROBES[probe_name]
    tag = f"{probe_name}-a{angle_deg:g}-b{bubbles:g}-f{frames}-s{seed}"
    path = cache / f"{tag}.npz"
    if path.exists():
        with np.load(path) as d:
            return d["rf"], d["list_pos"], (d["pulse_t"], d["pulse"])
    list_pos = simulate_bubbles(frames, seed, bubbles_per_frame=bubbles, x_range=x_range, z_range=z_range, n_vessels=8)
    rf = simulate_rf(list_pos, probe, tx_angle=np.radians(angle_deg), backend="pymust")
    pulse = reference_pulse(probe, "pymust")
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    np.savez(tmp, rf=rf, list_pos=list_pos, pulse_t=pulse[0], pulse=pulse[1])
    os.replace(tmp, path)
    return rf, list_pos, pulse


def run_method(method: str, rf, list_pos, probe, angle, pulse, channels: int, false_alarms: float | None = None) -> dict:
    """One method on all frames; ``false_alarms`` (None: the library default) sets the noise-floor
    rule of both DAS+WA (``false_alarms``) and G-ULM's coherent seeds (``seed_false_alarms``)."""
    start = time.perf_counter()
    if method == "DAS+WA":
        z = list_pos[:, 1, :][np.isfinite(list_pos[:, 1, :])]
        z_range = (max(0.5, z.min() - 1.0), z.max() + 1.0) if len(z) else None
        kw = {} if false_alarms is None else dict(false_alarms=false_alarms)
        points = localize_das_wa(rf, probe, tx_angle=angle, channels=channels, z_range=z_range, **kw)
    else:
        kw = {} if false_alarms is None else dict(seed_false_alarms=false_alarms)
        points = localize(rf, probe, tx_angle=angle, channels=channels, pulse=pulse, **kw)
    seconds = (time.perf_counter() - start) / rf.shape[0]
    result = evaluate(points, list_pos, probe.wavelength, ssim=False)
    result.update(seconds_per_frame=seconds, detections=len(points))
    return result


def ordering(rows: list[dict]) -> list[str]:
    """One line per (probe, angle, density, SNR) cell holding both G-ULM 128 and DAS+WA 128."""
    cells: dict = {}
    for r in rows:
        if r["snr"] in ("noise-only",) or r["method"] not in ("G-ULM 128", "DAS+WA 128"):
            continue
        cells.setdefault((r["probe"], r["angle_deg"], r["bubbles"], r["snr"]), {})[r["method"]] = r
    out = []
    for (probe, angle, bubbles, snr), pair in cells.items():
        if len(pair) < 2:
            continue
        g, d = pair["G-ULM 128"], pair["DAS+WA 128"]
        verdict = "ahead" if g["jaccard"] > d["jaccard"] else ("level" if g["jaccard"] == d["jaccard"] else "behind")
        out.append(
            f"{probe:8} {angle:>3g} deg {bubbles:>3g} bub {snr:>5} dB: {g['frames']} frames, {g['true_bubbles']} true bubbles; "
            f"G-ULM {100 * g['jaccard']:.1f} % (TP {g['tp']}, FP {g['fp']}, FN {g['fn']}) vs DAS+WA {100 * d['jaccard']:.1f} % "
            f"(TP {d['tp']}, FP {d['fp']}, FN {d['fn']}): {verdict}"
        )
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="bubble seed (noise seed + 1) when --seeds is not given")
    parser.add_argument("--seeds", default=None, help="comma list of bubble seeds whose --frames frames are pooled into each row (e.g. 0,1,2,3: 4x the frames)")
    parser.add_argument("--dense-snr", default="30", help="SNR levels run for the densities after the first")
    parser.add_argument("--cache", type=Path, default=Path(".benchmarks-cache/ulm-pymust"))
    parser.add_argument("--probes", default="L11-5v,L22-14v")
    parser.add_argument("--angles", default="0,5", help="steering angles in degrees")
    parser.add_argument("--snr", default="none,40,30,20,10", help="in-band SNR levels (dB; none = noiseless)")
    parser.add_argument("--densities", default="9,18", help="mean bubbles per frame; all but the first only at 30 dB")
    parser.add_argument("--quick", action="store_true", help="L11-5v, 0 deg, 9 bubbles, 30 and 20 dB")
    parser.add_argument("--methods", default="all", help="all, or a comma list of row names to run, e.g. 'G-ULM 128,G-ULM no pulse 128'")
    parser.add_argument("--false-alarms", type=float, default=None, help="noise-floor rule of both methods: expected noise maxima per image (DAS+WA false_alarms, G-ULM seed_false_alarms; default: the library's)")
    parser.add_argument("--no-noise-only", action="store_true", help="skip the noise-only rows")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.probes, args.angles, args.snr, args.densities = "L11-5v", "0", "30,20", "9"
    import warnings

    warnings.simplefilter("ignore")  # the no-pulse rows warn by design
    args.cache.mkdir(parents=True, exist_ok=True)
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True, text=True).stdout.strip()
    print(f"PyMUST SIMUS benchmark, {args.frames} frames per row, seed {args.seed}; false alarms {args.false_alarms or 'default'}; {cpu}; load at start: {os.getloadavg()}")
    densities = [float(d) for d in args.densities.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    rows = []
    header = f"{'probe':8} {'angle':>5} {'bub':>4} {'SNR':>5} {'method':22} {'Jacc %':>7} {'PALA J %':>8} {'err l/10':>8} {'det':>5} {'s/frame':>8}"
    print(header)
    print("-" * len(header))
    for probe_name in args.probes.split(","):
        probe = PROBES[probe_name][0]
        for angle_deg in (float(a) for a in args.angles.split(",")):
            angle = np.radians(angle_deg)
            for density in densities:
                parts = [dataset(args.cache, probe_name, angle_deg, density, args.frames, s) for s in seeds]
                length = max(p[0].shape[1] for p in parts)  # records end after each seed's deepest bubble
                rf_clean = np.concatenate([np.pad(p[0], ((0, 0), (0, length - p[0].shape[1]), (0, 0))) for p in parts])
                width = max(p[1].shape[0] for p in parts)
                list_pos = np.concatenate([np.pad(p[1], ((0, width - p[1].shape[0]), (0, 0), (0, 0)), constant_values=np.nan) for p in parts], axis=2)
                pulse = parts[0][2]
                snrs = args.snr.split(",") if density == densities[0] else args.dense_snr.split(",")
                for snr in snrs + (["noise-only"] if density == densities[0] and not args.no_noise_only else []):
                    if snr == "noise-only":
                        rf = add_noise_snr(rf_clean, probe, 30.0, seed=args.seed + 1, noise_only=True)
                        truth = np.full((1, 3, rf.shape[0]), np.nan)
                    else:
                        rf = add_noise_snr(rf_clean, probe, None if snr == "none" else float(snr), seed=args.seed + 1)
                        truth = list_pos
                    methods = [("G-ULM", 128, pulse), ("G-ULM", 16, pulse), ("DAS+WA", 128, None), ("DAS+WA", 16, None)]
                    if snr in ("30", "none"):
                        methods.append(("G-ULM no pulse", 128, None))
                    if args.methods != "all":
                        wanted = {m.strip() for m in args.methods.split(",")}
                        methods = [m for m in methods if f"{m[0]} {m[1]}" in wanted]
                    for method, channels, p in methods:
                        r = run_method(method.split()[0] if method != "DAS+WA" else method, rf, truth, probe, angle, p, channels, args.false_alarms)
                        r.update(probe=probe_name, angle_deg=angle_deg, bubbles=density, snr=snr, method=f"{method} {channels}", frames=int(rf.shape[0]), true_bubbles=int(np.isfinite(truth[:, 0, :]).sum()))
                        rows.append(r)
                        jac = "-" if snr == "noise-only" else f"{100 * r['jaccard']:.1f}"
                        pj = "-" if snr == "noise-only" else f"{100 * r['pala_jaccard']:.1f}"
                        print(f"{probe_name:8} {angle_deg:>5g} {density:>4g} {snr:>5} {r['method']:22} {jac:>7} {pj:>8} {r['error_lambda10']:>8.3f} {r['detections']:>5} {r['seconds_per_frame']:>8.3f}", flush=True)
    print(f"load at end: {os.getloadavg()}")
    summary = ordering(rows)
    if summary:
        print("\nG-ULM 128 vs DAS+WA 128 (Jaccard, ours): strictly ahead / level / behind per cell")
        for line in summary:
            print(line)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float))
    return {"rows": rows}


if __name__ == "__main__":
    main()
