"""A small ultrasound localization microscopy benchmark: geometric ULM (G-ULM) vs DAS + weighted average.

Shows: simulating microbubbles in vessels and their plane-wave RF channel data, localizing them
with G-ULM (echo fitting + ellipse intersection, no beamforming) and with the DAS + weighted-average
baseline, PALA-style scores for both (localization error in lambda/10, Jaccard, precision, recall)
and a density (ULM) image of the G-ULM localizations.

    python examples/ulm_benchmark.py --out out/ulm                    # 20 frames, clutter -30 dB
    python examples/ulm_benchmark.py --out out/ulm --fast             # 3 frames, 8 bubbles per frame
    python examples/ulm_benchmark.py --out out/ulm --clutter-db -30 -20 -10 --frames 50
    python examples/ulm_benchmark.py --out out/ulm --snr-db 30          # in-band SNR 30 dB on top
    (independent simulator, noise sweep, two probes: benchmarks/bench_ulm_pymust.py)

The same from the command line:
    freehand3d ulm simulate -o sim --frames 20 --clutter-db -30
    freehand3d ulm localize sim/rf.npz -o gulm.csv --method gulm
    freehand3d ulm evaluate gulm.csv sim/gt.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("gulm", "das-wa")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="Frames per clutter level.")
    parser.add_argument("--bubbles", type=float, default=12.0, help="Mean bubbles per frame.")
    parser.add_argument("--clutter-db", type=float, nargs="+", default=[-30.0], help="PALA clutter levels (dB).")
    parser.add_argument("--channels", type=int, default=128, help="Receive channels used.")
    parser.add_argument("--snr-db", type=float, default=None, help="Also add noise of this in-band SNR (the G-ULM authors' noise shape).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="3 frames, 8 bubbles per frame, one clutter level.")
    args = parser.parse_args(argv)
    if args.fast:
        args.frames, args.bubbles, args.clutter_db = 3, 8.0, args.clutter_db[:1]

    from freehand3d._atomic import write_text_atomic
    from freehand3d.simulate.rf import simulate_dataset
    from freehand3d.ulm.files import evaluate_files, localize_file, render_file

    results = {}
    for clutter in args.clutter_db:
        folder = args.out / f"clutter{int(clutter)}dB"
        folder.mkdir(parents=True, exist_ok=True)
        rf, gt = simulate_dataset(folder, args.frames, args.seed, clutter_db=clutter, bubbles_per_frame=args.bubbles, snr_db=args.snr_db)
        for method in METHODS:
            points_csv = folder / f"{method}.csv"
            localize_file(rf, points_csv, method=method, channels=args.channels)
            results[f"{method} @ {clutter:g} dB"] = evaluate_files(points_csv, gt)
        render_file(folder / "gulm.csv", folder / "gulm.png")
    columns = ("error_lambda10", "jaccard", "precision", "recall", "tp", "fp", "fn")
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, scores in results.items():
        lines.append(f"| {name} | " + " | ".join(
            f"{scores[c]:.3f}" if isinstance(scores[c], float) else str(scores[c]) for c in columns) + " |")
    table = "\n".join(lines)
    print(table)
    write_text_atomic(args.out / "results.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(args.out / "results.md", table + "\n")
    return results


if __name__ == "__main__":
    main()
