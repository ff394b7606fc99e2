"""Train the shipped tiny DualTrack checkpoint (freehand3d/data/dualtrack-tiny.pt) on simulated sweeps
and compare it with the zero-motion baseline on held-out simulated sweeps.

    python benchmarks/train_tiny.py                      # simulate, train, evaluate (~20 min, 1 CPU thread)
    python benchmarks/train_tiny.py --install            # ... and copy best.pt to freehand3d/data/
    python benchmarks/train_tiny.py --evaluate-only freehand3d/data/dualtrack-tiny.pt

Steps
-----
1. Simulate sweeps with :func:`freehand3d.simulate.freehand.simulate_freehand` (480 x 640 frames,
   TUS-REC spacing, random smooth hand-held trajectories; seeds 1000+k train, 2000+k val,
   3000+k test) and write them as DualTrack h5 files plus a ``sweeps.csv`` (cached in ``--work``).
2. Train the ``tiny`` architecture with smaller inputs (128 px local crops -> 8 x 8 CNN maps, 112 px
   global frames) end to end (``stage="finetune"`` from random weights: with a few CPU minutes the
   staged schedule has no time to pay off) with :func:`freehand3d.tracking.train.train`.
3. Track every held-out sweep with :func:`freehand3d.tracking.track` and score it against the
   simulator's poses with :func:`freehand3d.tracking.workflows.evaluate_poses`; the zero-motion
   baseline predicts the identity for every frame.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "freehand3d" / "data" / "dualtrack-tiny.pt"


def tiny_training_config():
    """The shipped architecture: the ``tiny`` preset (128 px local crops, 112 px global frames)."""
    from freehand3d.tracking.model import get_config

    return get_config("tiny")


def simulate_dataset(work: Path, n_train: int, n_val: int, n_test: int, train_frames: int, test_frames: int) -> Path:
    from freehand3d.io.dualtrack_h5 import write_dualtrack_h5
    from freehand3d.simulate.freehand import simulate_freehand

    work.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = [("train", 1000 + k, train_frames) for k in range(n_train)]
    plan += [("val", 2000 + k, test_frames) for k in range(n_val)]
    plan += [("test", 3000 + k, test_frames) for k in range(n_test)]
    t0 = time.perf_counter()
    for split, seed, n_frames in plan:
        path = work / f"{split}_{seed}_{n_frames}.h5"
        if not path.exists():
            sweep, _truth = simulate_freehand(n_frames=n_frames, seed=seed)
            # Reference = the simulated volume: the fixed world of the ground-truth poses
            write_dualtrack_h5(sweep, path, world="Reference", compression=None)
        rows.append({"sweep_id": f"{split}{seed}", "path": path.name, "split": split})
    csv_path = work / "sweeps.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sweep_id", "path", "split"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"simulated {len(plan)} sweeps in {time.perf_counter() - t0:.0f} s -> {csv_path}")
    return csv_path


def evaluate(checkpoint, csv_path: Path, device: str = "cpu") -> list[dict]:
    """Held-out (split ``test``) metrics of the checkpoint and of the zero-motion baseline."""
    from freehand3d.io import read_sweep
    from freehand3d.tracking import load_dualtrack, track
    from freehand3d.tracking.data import read_sweep_csv
    from freehand3d.tracking.workflows import evaluate_poses, sweep_dualtrack_poses

    model = load_dualtrack(checkpoint)
    rows = []
    for entry in read_sweep_csv(csv_path):
        if entry.split != "test":
            continue
        sweep = read_sweep(entry.path)
        gt = sweep_dualtrack_poses(sweep)
        pred = sweep_dualtrack_poses(track(sweep, model, device=device))
        zero = np.tile(np.eye(4), (len(gt), 1, 1))
        # the zero-motion drift rates are 100 % by construction; keep them for the table
        ours = evaluate_poses(pred, gt, sweep.spacing, sweep.frame_shape)
        base = evaluate_poses(zero, gt, sweep.spacing, sweep.frame_shape)
        rows.append({"sweep": entry.sweep_id, "ours": ours, "zero": base})
    return rows


def print_table(rows) -> None:
    keys = ("GPE", "LPE", "GPE_5pt", "LPE_5pt", "FDR_pct", "max_drift_mm")
    print(f"{'sweep':<12}" + "".join(f"{k + ' ours':>16}{k + ' zero':>16}" for k in keys[:2]))
    for r in rows:
        print(f"{r['sweep']:<12}" + "".join(f"{r['ours'][k]:>16.3f}{r['zero'][k]:>16.3f}" for k in keys[:2]))
    print()
    print(f"{'metric (mean of held-out sweeps)':<34}{'tiny DualTrack':>16}{'zero motion':>14}{'ratio':>8}")
    for k in keys:
        ours = float(np.mean([r["ours"][k] for r in rows]))
        zero = float(np.mean([r["zero"][k] for r in rows]))
        print(f"{k:<34}{ours:>16.3f}{zero:>14.3f}{ours / zero:>8.3f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/freehand3d-train-tiny"), help="data + run folder")
    parser.add_argument("--n-train", type=int, default=12)
    parser.add_argument("--n-val", type=int, default=2)
    parser.add_argument("--n-test", type=int, default=4)
    parser.add_argument("--train-frames", type=int, default=96)
    parser.add_argument("--test-frames", type=int, default=64)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--install", action="store_true", help=f"copy the best checkpoint to {SHIPPED}")
    parser.add_argument("--evaluate-only", type=Path, default=None, help="skip training, evaluate this checkpoint")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    csv_path = simulate_dataset(args.work, args.n_train, args.n_val, args.n_test, args.train_frames, args.test_frames)
    checkpoint = args.evaluate_only
    if checkpoint is None:
        from freehand3d.tracking.train import TrainOptions, train

        options = TrainOptions(
            stage="finetune",
            preset=tiny_training_config(),
            epochs=args.epochs,
            batch_size=args.batch_size,
            window=args.window,
            window_stride=16,
            lr=args.lr,
            warmup_steps=10,
            seed=0,
            device=args.device,
        )
        t0 = time.perf_counter()
        result = train(csv_path, args.work / "run", options)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s")
        for h in result.history:
            print(f"  epoch {h['epoch'] + 1}: train loss {h['train_loss']:.4f}  val loss {h['val_loss']:.4f}")
        checkpoint = result.best
        size_mb = checkpoint.stat().st_size / 2**20
        print(f"best epoch {result.best_epoch + 1}: {checkpoint} ({size_mb:.1f} MB)")
        if args.install:
            SHIPPED.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(checkpoint, SHIPPED)
            print(f"installed -> {SHIPPED}")
    print_table(evaluate(checkpoint, csv_path, args.device))
    return 0


if __name__ == "__main__":
    sys.exit(main())
