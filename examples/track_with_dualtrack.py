"""Track a sweep with DualTrack (sensorless freehand tracking) and score it against its true poses.

Shows: loading DualTrack weights (the published ImFusion checkpoints, which you download yourself
under their CC BY-NC-SA 4.0 licence, or freehand3d's shipped tiny checkpoint), estimating the
trajectory of a sweep from its frames alone, writing the tracked sweep, the tracking errors
(GPE, 5-point proxy, final drift rate) next to those of assuming no motion, and a trajectory plot.

    # default: the shipped tiny checkpoint on a simulated 480 x 640 sweep
    python examples/track_with_dualtrack.py --out out/track
    python examples/track_with_dualtrack.py --out out/track --fast              # 8 frames
    # published weights on your own sweep (480 x 640 frames, with poses for the scores)
    python examples/track_with_dualtrack.py --checkpoint dualtrack_final.pt --sweep scan.h5 --out out/track

The same from the command line:
    freehand3d track SWEEP --checkpoint CKPT -o tracked.igs.mha --plot trajectory.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHIPPED = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED,
                        help="DualTrack weights (.pt, official or freehand3d's); default the shipped tiny one.")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="Sweep to track (480 x 640 frames); default a simulated one.")
    parser.add_argument("--frames", type=int, default=40, help="Frames of the simulated sweep.")
    parser.add_argument("--preset", default=None, help="Model preset (default: from the checkpoint).")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="A simulated sweep of 8 frames.")
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: checkpoint not found (pass --checkpoint)")

    import numpy as np

    from freehand3d._atomic import write_text_atomic
    from freehand3d.io import read_sweep, write_sweep
    from freehand3d.tracking import load_dualtrack, track
    from freehand3d.tracking.workflows import evaluate_poses, plot_trajectories, sweep_dualtrack_poses, sweep_spacing

    args.out.mkdir(parents=True, exist_ok=True)
    if args.sweep is None:
        from freehand3d.simulate import simulate_freehand

        sweep, _ = simulate_freehand(n_frames=8 if args.fast else args.frames, frame_size=(480, 640), seed=7)
        write_sweep(sweep, args.out / "simulated.igs.mha")
    else:
        sweep = read_sweep(args.sweep)
    model = load_dualtrack(args.checkpoint, preset=args.preset)
    print(f"model {model.config.name} from {args.checkpoint}")
    tracked = track(sweep, model, device=args.device)
    write_sweep(tracked, args.out / "tracked.igs.mha")

    predicted = sweep_dualtrack_poses(tracked)
    truth = sweep_dualtrack_poses(sweep)
    metrics = evaluate_poses(predicted, truth, sweep_spacing(sweep), sweep.frame_shape)
    # the baseline every tracker must beat: the probe never moved
    zero = evaluate_poses(np.tile(np.eye(4), (len(sweep), 1, 1)), truth, sweep_spacing(sweep), sweep.frame_shape)
    metrics["zero_motion"] = {k: v for k, v in zero.items() if k != "n_frames"}
    plot_trajectories(args.out / "trajectory.png", predicted, truth, title="DualTrack vs true poses")
    write_text_atomic(args.out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    print(f"{'':>14s} {'DualTrack':>9s} {'no motion':>9s}")
    for key in ("GPE", "LPE", "GPE_5pt", "FDR_pct", "max_drift_mm"):
        print(f"{key:>14s} {metrics[key]:9.3f} {zero[key]:9.3f}")
    return metrics


if __name__ == "__main__":
    main()
