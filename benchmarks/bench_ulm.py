"""G-ULM vs DAS + weighted-average localization on simulated plane-wave RF data (paper Tables 1 and 2).

Table 1: G-ULM with 8, 16, 32, 64, 128 channels and DAS+WA with 128 channels on the same frames
(clutter -20 dB, PALA's default level): localization error in lambda/10 (mean +- std over true
positives), Jaccard, seconds per frame (wall and process CPU), SSIM of the lambda/10 density maps,
and the ratios to DAS+WA measured in the same run. Table 2: the same at clutter -30, -20, -10 dB.

Data are simulated once per (backend, frames, seed, clutter) and cached outside git
(default ~/.cache/freehand3d/ulm, or --cache DIR).

    python benchmarks/bench_ulm.py                     # both tables + timing, 30 frames, analytic simulator
    python benchmarks/bench_ulm.py --backend pymust    # PyMUST simus data (pip install pymust)
    python benchmarks/bench_ulm.py --frames 100 --json results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from freehand3d.simulate.rf import load_ground_truth, load_rf, reference_pulse, save_ground_truth, save_rf, simulate_bubbles, simulate_rf
from freehand3d.ulm.baseline import localize_das_wa
from freehand3d.ulm.metrics import evaluate
from freehand3d.ulm.pipeline import localize
from freehand3d.ulm.probe import LinearProbe


def dataset(cache: Path, backend: str, frames: int, seed: int, clutter_db: float | None, bubbles: float):
    """(rf, list_pos, pulse) from the cache, simulating them on a miss."""
    probe = LinearProbe()
    tag = f"{backend}-f{frames}-s{seed}-b{bubbles:g}-c{'none' if clutter_db is None else f'{clutter_db:g}'}"
    rf_path, gt_path = cache / f"{tag}-rf.npz", cache / f"{tag}-gt.npz"
    if rf_path.exists() and gt_path.exists():
        rf, _, acq = load_rf(rf_path)
        return rf, load_ground_truth(gt_path), (acq["pulse_t"], acq["pulse"])
    # the same bubbles for every clutter level: noise is the only difference between rows of Table 2
    list_pos = simulate_bubbles(frames, seed, bubbles_per_frame=bubbles, frame_rate=100.0)
    rf = simulate_rf(list_pos, probe, clutter_db=clutter_db, seed=seed, backend=backend, progress=True)
    pulse = reference_pulse(probe, backend)
    save_rf(rf_path, rf, probe, pulse_t=pulse[0], pulse=pulse[1])
    save_ground_truth(gt_path, list_pos, probe)
    return rf, list_pos, pulse


def run(method: str, rf, list_pos, pulse, channels: int) -> dict:
    probe = LinearProbe()
    wall, cpu = time.perf_counter(), time.process_time()
    if method == "G-ULM":
        points = localize(rf, probe, channels=channels, pulse=pulse)
    else:
        z = list_pos[:, 1, :][np.isfinite(list_pos[:, 1, :])]
        points = localize_das_wa(rf, probe, channels=channels, z_range=(max(0.5, z.min() - 1.0), z.max() + 1.0))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = evaluate(points, list_pos, probe.wavelength)
    result.update(method=method, channels=channels, s_per_frame=wall / rf.shape[0], cpu_s_per_frame=cpu / rf.shape[0])
    return result


def print_table(title: str, rows: list[dict], reference: dict) -> None:
    print(f"\n{title}")
    header = f"{'method':8} {'ch':>4} {'error l/10':>16} {'Jaccard %':>9} {'s/frame':>8} {'cpu s/fr':>8} {'SSIM':>6} {'err/DAS':>8} {'Jac/DAS':>8} {'time/DAS':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:8} {r['channels']:>4} {r['error_lambda10']:>8.3f} +- {r['error_std_lambda10']:<5.3f} {100 * r['jaccard']:>9.1f} "
            f"{r['s_per_frame']:>8.3f} {r['cpu_s_per_frame']:>8.3f} {r['ssim']:>6.3f} "
            f"{r['error_lambda10'] / reference['error_lambda10']:>8.2f} {r['jaccard'] / reference['jaccard']:>8.2f} {r['s_per_frame'] / reference['s_per_frame']:>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bubbles", type=float, default=12.0, help="mean bubbles per frame")
    parser.add_argument("--backend", choices=("analytic", "pymust"), default="analytic")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "freehand3d" / "ulm")
    parser.add_argument("--tables", default="1,2,t", help="which tables: 1, 2, t (per-frame timing of G-ULM 128), comma separated")
    parser.add_argument("--json", type=Path, default=None, help="also write all rows as JSON")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    tables = {t.strip() for t in args.tables.split(",")}
    out = {"settings": {k: str(v) for k, v in vars(args).items()}, "table1": [], "table2": []}
    print(f"backend={args.backend} frames={args.frames} seed={args.seed} bubbles/frame={args.bubbles} (timings: this machine, this load)")

    if "1" in tables:
        rf, list_pos, pulse = dataset(args.cache, args.backend, args.frames, args.seed, -20.0, args.bubbles)
        das = run("DAS+WA", rf, list_pos, pulse, 128)
        rows = [run("G-ULM", rf, list_pos, pulse, ch) for ch in (8, 16, 32, 64, 128)] + [das]
        print_table("Table 1 - clutter -20 dB (ratios: row / DAS+WA 128 in this run)", rows, das)
        out["table1"] = rows

    if "t" in tables:
        # per-frame wall times of G-ULM with 128 channels; on a shared machine the minimum over
        # frames and repeats is the best estimate of the uncontended time (as timeit reports)
        from freehand3d.ulm.pipeline import localize_frame

        rf, list_pos, pulse = dataset(args.cache, args.backend, args.frames, args.seed, -20.0, args.bubbles)
        probe = LinearProbe()
        localize_frame(rf[0], probe, pulse=pulse)  # warm-up: reference fit, caches
        times, cpu = [], []
        for _ in range(3):
            for frame in rf:
                start, start_cpu = time.perf_counter(), time.process_time()
                localize_frame(frame, probe, channels=128, pulse=pulse)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
        times, cpu = np.asarray(times), np.asarray(cpu)
        print(f"\nG-ULM 128 channels, wall s/frame over {len(times)} runs: median {np.median(times):.3f}, min {times.min():.3f}, 90th pct {np.percentile(times, 90):.3f}")
        # process CPU time (all threads) beside it: on a loaded machine the wall time waits for a core
        print(f"G-ULM 128 channels, CPU s/frame over {len(cpu)} runs: median {np.median(cpu):.3f}, min {cpu.min():.3f}, 90th pct {np.percentile(cpu, 90):.3f}")
        out["timing"] = {"median": float(np.median(times)), "min": float(times.min()), "p90": float(np.percentile(times, 90)), "cpu_median": float(np.median(cpu)), "cpu_min": float(cpu.min())}

    if "2" in tables:
        rows = []
        for clutter in (-30.0, -20.0, -10.0):
            rf, list_pos, pulse = dataset(args.cache, args.backend, args.frames, args.seed, clutter, args.bubbles)
            das = run("DAS+WA", rf, list_pos, pulse, 128)
            for ch in (16, 128):
                row = run("G-ULM", rf, list_pos, pulse, ch)
                row.update(clutter_db=clutter, error_ratio_to_das=row["error_lambda10"] / das["error_lambda10"], jaccard_ratio_to_das=row["jaccard"] / das["jaccard"])
                rows.append(row)
            das.update(clutter_db=clutter)
            rows.append(das)
        print("\nTable 2 - clutter levels")
        header = f"{'clutter':>7} {'method':8} {'ch':>4} {'error l/10':>16} {'Jaccard %':>9} {'SSIM':>6} {'s/frame':>8}"
        print(header)
        print("-" * len(header))
        for r in rows:
            print(f"{r['clutter_db']:>7.0f} {r['method']:8} {r['channels']:>4} {r['error_lambda10']:>8.3f} +- {r['error_std_lambda10']:<5.3f} {100 * r['jaccard']:>9.1f} {r['ssim']:>6.3f} {r['s_per_frame']:>8.3f}")
        out["table2"] = rows

    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
