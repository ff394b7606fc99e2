"""N-wire calibration benchmark: speed on the PLUS fCal 1.2 recording, accuracy against PLUS's
results, ablation on simulated frames (like Liu et al. 2025, Table 2) and RANSAC+LM vs plain LM on
corrupted tracker poses.

    python benchmarks/bench_calibration.py            # everything (a few minutes on 2 cores)
    python benchmarks/bench_calibration.py --quick    # fewer simulated frames

All ratios are measured side by side in one run. Timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import freehand3d
from freehand3d.calibration.detect import detect_points
from freehand3d.calibration.metrics import calibration_error, rotation_translation_difference
from freehand3d.calibration.nwire import find_nwires
from freehand3d.calibration.pipeline import calibrate, mirror_labels
from freehand3d.io import read_sweep
from freehand3d.io.plus_config import read_device_set, read_plus_calibration_results
from freehand3d.phantoms import load_phantom
from freehand3d.simulate.nwire import simulate_nwire

DATA = Path(freehand3d.__file__).resolve().parent / "data" / "plus"


def table(title, header, rows):
    print(f"\n{title}")
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)))


def bench_plus_recording():
    ds = read_device_set(DATA / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")
    ref = read_plus_calibration_results(DATA / "FreehandCalibration3NWires.results.xml")
    cal = read_sweep(DATA / "fCal_Test_Calibration_3NWires.igs.mha")
    val = read_sweep(DATA / "fCal_Test_Validation_3NWires.igs.mha")
    rows = []
    for method in ("hessian", "plus"):
        detect_points(cal.frames[0], None, method, params=ds.segmentation)  # warm-up
        t0 = time.perf_counter()
        for f in cal.frames:
            detect_points(f, None, method, params=ds.segmentation)
        rows.append((method, f"{(time.perf_counter() - t0) / len(cal) * 1000:.1f}"))
    table("Detection time per 820x616 frame (188 frames)", ("method", "ms/frame"), rows)

    rows = []
    for detection in ("hessian", "plus"):
        for solver in ("plus", "ransac-lm", "lm"):
            t0 = time.perf_counter()
            r = calibrate(cal, ds.phantom, None, solver=solver, params=ds.segmentation, detection=detection)
            seconds = time.perf_counter() - t0
            r = calibrate(cal, ds.phantom, val, solver=solver, params=ds.segmentation, detection=detection)
            angle, shift = rotation_translation_difference(r.image_to_probe, ref.image_to_probe)
            err = np.linalg.norm(r.calibration.labelled - ref.calibration.points, axis=2)
            verr = np.linalg.norm(r.validation.labelled - ref.validation.points, axis=2)
            rows.append((detection, solver, f"{r.frames_segmented}/188", f"{r.validation_frames_segmented}/94",
                         f"{np.mean(np.r_[err.ravel(), verr.ravel()] < 1.0) * 100:.2f}",
                         f"{np.max(np.r_[err.ravel(), verr.ravel()]):.2f}",
                         f"{angle:.3f}", f"{shift:.3f}",
                         f"{r.pre3d_calibration_mean_mm:.3f}+-{r.pre3d_calibration_std_mm:.3f}",
                         f"{r.pre3d_validation_mean_mm:.3f}+-{r.pre3d_validation_std_mm:.3f}",
                         f"{seconds:.2f}"))
    rows.append(("PLUS", "(results XML)", "188/188", "94/94", "100", "0", "0", "0",
                 f"{ref.reprojection_3d['calibration_mean_mm']:.3f}+-{ref.reprojection_3d['calibration_std_mm']:.3f}",
                 f"{ref.reprojection_3d['validation_mean_mm']:.3f}+-{ref.reprojection_3d['validation_std_mm']:.3f}",
                 "-"))
    # CRE: calibrations from 4 disjoint blocks of consecutive frames (segmentation reused)
    from freehand3d.calibration.metrics import calibration_reproducibility
    from freehand3d.calibration.pipeline import _observations
    from freehand3d.calibration.solve import phantom_points_in_probe, solve_plus, solve_ransac_lm

    seg = r.calibration
    ptr = ds.phantom.phantom_to_reference
    cre_rows = []
    for solver in ("plus", "ransac-lm"):
        cals = []
        for block in np.array_split(np.flatnonzero(seg.usable), 4):
            sub = type(seg)(seg.labelled, seg.segmented, np.isin(np.arange(len(seg.usable)), block),
                            seg.probe_to_reference)
            px, pts, poses, _ = _observations(sub, ds.phantom)
            if solver == "plus":
                cals.append(solve_plus(px, phantom_points_in_probe(pts, poses, ptr))[0])
            else:
                cals.append(solve_ransac_lm(px, pts, poses, ptr)[0])
        cre_rows.append((solver, f"{calibration_reproducibility(np.array(cals), cal.frame_shape):.3f}"))
    table("CRE on the PLUS recording (4 disjoint blocks of 47 frames, image corners)", ("solver", "CRE mm"),
          cre_rows)
    table("PLUS fCal 1.2 recording vs PLUS's own result",
          ("detection", "solver", "cal seg", "val seg", "% pts <1px of PLUS", "max px", "dRot deg", "dT mm",
           "PRE3D cal (best 95%)", "PRE3D val (best 95%)", "s (188 frames, total)"), rows)


def _score_frames(sweep, truth, phantom, tol_px, **kwargs):
    """Recognition (every wire labelled within tol of truth) and false detections (a labelled
    point farther than tol from its wire) over frames that show the phantom."""
    spacing = float(np.mean(sweep.spacing))
    recognised = false = total = 0
    n_layers = len(phantom.nwires)
    det_kw = {k: v for k, v in kwargs.items() if k in ("top_hat", "multiscale")}
    for i in range(len(sweep)):
        if not truth["has_phantom"][i]:
            continue
        total += 1
        pts = detect_points(sweep.frames[i], spacing, **det_kw)
        lab = find_nwires(pts, phantom, spacing, use_constraints=kwargs.get("use_constraints", True))
        if lab is None:
            continue
        t = truth["wire_pixels"][i]
        err = np.minimum(np.linalg.norm(lab - t, axis=1), np.linalg.norm(mirror_labels(lab, n_layers) - t, axis=1))
        if np.all(err < tol_px):
            recognised += 1
        else:
            false += 1
    return recognised, false, total


def bench_ablation(n_frames):
    phantom = load_phantom("fcal-1.2")
    variants = [("full method", {}), ("without top-hat", {"top_hat": False}),
                ("without multi-scale Hessian", {"multiscale": False}),
                ("without geometric constraints", {"use_constraints": False})]
    rows = []
    for noise in ("low", "medium", "high"):
        sweep, truth = simulate_nwire(phantom, n_frames=n_frames, noise=noise, wall_echoes=True, seed=11)
        tol_px = 1.0 / float(np.mean(sweep.spacing))  # 1 mm
        for name, kw in variants:
            rec, false, total = _score_frames(sweep, truth, phantom, tol_px, **kw)
            rows.append((noise, name, f"{100 * rec / total:.1f}", f"{100 * false / total:.1f}", total))
    table("Ablation on simulated fCal 1.2 frames with wall echoes (point within 1 mm of its wire)",
          ("noise", "variant", "recognition %", "false detection %", "frames"), rows)


def bench_robust(n_frames):
    rows = []
    for name in ("fcal-1.2", "fcal-2.0", "fcal-3.0"):
        phantom = load_phantom(name)
        for noise in ("low", "medium", "high"):
            sweep, truth = simulate_nwire(phantom, n_frames=n_frames, noise=noise, wall_echoes=True,
                                          corrupt_pose_fraction=0.1, seed=7)
            errs = {}
            for solver in ("ransac-lm", "lm", "plus"):
                r = calibrate(sweep, phantom, solver=solver, phantom_to_reference=truth["phantom_to_reference"])
                errs[solver] = calibration_error(r.image_to_probe, truth["image_to_probe"], sweep.frame_shape)
                if solver == "ransac-lm":
                    seg = r.frames_segmented
            rows.append((name, noise, f"{seg}/{len(sweep)}", f"{errs['ransac-lm']:.3f}", f"{errs['lm']:.3f}",
                         f"{errs['plus']:.3f}", f"{errs['lm'] / errs['ransac-lm']:.1f}x"))
    table("Calibration error (mm, corners + centre vs truth), 10 % corrupted tracker poses",
          ("phantom", "noise", "segmented", "RANSAC+LM", "plain LM", "PLUS LSQR", "LM / RANSAC+LM"), rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulated frames")
    args = parser.parse_args()
    n = 30 if args.quick else 100
    bench_plus_recording()
    bench_ablation(n)
    bench_robust(n)


if __name__ == "__main__":
    main()
