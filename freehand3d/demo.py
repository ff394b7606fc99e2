"""``freehand3d demo``: the whole chain on bundled and simulated data, with a report.

Steps (each prints its numbers and writes its files under ``out``):

a. calibrate the bundled PLUS fCal 1.2 recording (validation PRE3D, comparison with PLUS's result,
   overlay PNGs);
b. reconstruct the bundled spine-phantom sweep with PLUS's NN_LATE configuration (.nrrd + preview),
   compared voxel by voxel with PLUS's reference volume;
c. simulate a freehand sweep, track it with the shipped tiny DualTrack checkpoint, reconstruct it
   with predicted and with true poses, GPE / FDR and a trajectory plot;
d. a short G-ULM vs DAS+WA comparison when the ``ulm-sim`` extra (PyMUST) is installed;
e. ``report.md`` linking every PNG and listing every number.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
PLUS = DATA / "plus"
TINY_CHECKPOINT = DATA / "dualtrack-tiny.pt"
#: the demo's steps, in order (``freehand3d demo --skip STEP``)
STEPS = ("calibration", "reconstruction", "tracking", "ulm")


def _rotation_deg(a: np.ndarray, b: np.ndarray) -> float:
    from freehand3d import geometry

    ra = geometry.orthonormalize(a)[:3, :3]
    rb = geometry.orthonormalize(b)[:3, :3]
    return float(geometry.rotation_angle_deg(geometry.rigid(ra.T @ rb)))


def step_calibration(out: Path, say: Callable[[str], None]) -> dict:
    from freehand3d.calibration.pipeline import calibrate_files
    from freehand3d.io.plus_config import read_plus_calibration_results

    folder = out / "calibration"
    t0 = time.perf_counter()
    result = calibrate_files(
        PLUS / "fCal_Test_Calibration_3NWires.igs.mha",
        PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
        folder / "result.json",
        validation_path=PLUS / "fCal_Test_Validation_3NWires.igs.mha",
        overlay=folder / "overlays",
    )
    seconds = time.perf_counter() - t0
    plus = read_plus_calibration_results(PLUS / "FreehandCalibration3NWires.results.xml")
    ours = np.asarray(result.image_to_probe)
    d_translation = float(np.linalg.norm(ours[:3, 3] - plus.image_to_probe[:3, 3]))
    d_rotation = _rotation_deg(ours, plus.image_to_probe)
    numbers = {
        "frames_segmented": f"{result.frames_segmented}/{result.frames_total}",
        "pre3d_validation_mm": f"{result.pre3d_validation_mean_mm:.3f} ± {result.pre3d_validation_std_mm:.3f}",
        "pre3d_validation_plus_mm": (f"{plus.reprojection_3d['validation_mean_mm']:.3f} ± "
                                     f"{plus.reprojection_3d['validation_std_mm']:.3f}"),
        "tracker_lag_estimated_s": f"{result.time_offset_s or 0.0:.3f}",
        "pre3d_calibration_mm": f"{result.pre3d_calibration_mean_mm:.3f} ± {result.pre3d_calibration_std_mm:.3f}",
        "image_to_probe_translation_vs_plus_mm": f"{d_translation:.3f}",
        "image_to_probe_rotation_vs_plus_deg": f"{d_rotation:.3f}",
        "seconds": f"{seconds:.1f}",
    }
    say(f"calibration: {numbers['frames_segmented']} frames segmented, validation PRE3D "
        f"{numbers['pre3d_validation_mm']} mm (PLUS {numbers['pre3d_validation_plus_mm']}) with an estimated "
        f"tracker lag of {numbers['tracker_lag_estimated_s']} s, ImageToProbe vs PLUS's (which absorbs the lag): "
        f"{d_translation:.2f} mm / {d_rotation:.2f} deg, {seconds:.1f} s")
    pngs = sorted((folder / "overlays").glob("*.png"))[:4]
    notes = [
        "PRE3D: distance (mm) between each wire intersection seen in a validation frame and where the "
        "calibration puts it; lower is better. PLUS's number is its own result on the same recordings.",
        f"The ImageToProbe difference to PLUS's ({d_translation:.2f} mm / {d_rotation:.2f} deg) is not an "
        f"error of either: this recording's video lags its tracker by about {numbers['tracker_lag_estimated_s']} s. "
        "freehand3d estimates that lag and calibrates with it; PLUS uses the recorded time stamps, so its "
        "ImageToProbe absorbs the lag (it is fitted to poses from the wrong instants). With "
        "`--no-time-offset --fixed-registration` freehand3d matches PLUS to 0.02 mm / 0.01 deg "
        "(docs/calibration.md).",
        "Overlays: detected wire points on a few calibration frames (legend and frame number in each).",
    ]
    return {"numbers": numbers, "pngs": pngs, "files": [folder / "result.json"], "notes": notes}


def step_reconstruction(out: Path, say: Callable[[str], None]) -> dict:
    import SimpleITK as sitk

    from freehand3d.compound.volume import reconstruct, save_preview
    from freehand3d.io import read_sweep
    from freehand3d.io.volumes import write_volume

    folder = out / "reconstruction"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sweep = read_sweep(PLUS / "SpinePhantomFreehand.igs.mha")
    config = PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml"
    image = reconstruct(sweep, config=config, image_to_reference="ImageToReference")
    seconds = time.perf_counter() - t0
    write_volume(image, folder / "spine_nn_late.nrrd")
    save_preview(image, folder / "spine_nn_late.png", title="PLUS spine phantom sweep, PLUS's NN_LATE settings")
    ref = sitk.ReadImage(str(PLUS / "vtkVolumeReconstructorTestNNLATEvolumeRef.mha"))
    ours_arr = sitk.GetArrayFromImage(image).astype(np.int32)
    ref_arr = sitk.GetArrayFromImage(ref).astype(np.int32)
    same_grid = ours_arr.shape == ref_arr.shape and np.allclose(image.GetOrigin(), ref.GetOrigin(), atol=1e-6)
    diff = np.abs(ours_arr - ref_arr) if same_grid else None
    numbers = {
        "size": "x".join(map(str, image.GetSize())),
        "same_size_and_origin_as_plus": str(same_grid),
        "voxels_equal_pct": f"{100 * (diff == 0).mean():.3f}" if same_grid else "n/a",
        "voxels_within_2_pct": f"{100 * (diff <= 2).mean():.3f}" if same_grid else "n/a",
        "max_abs_diff": str(int(diff.max())) if same_grid else "n/a",
        "seconds": f"{seconds:.2f}",
    }
    say(f"reconstruction: spine sweep NN_LATE {numbers['size']} voxels, vs PLUS reference: "
        f"{numbers['voxels_equal_pct']} % equal, max |diff| {numbers['max_abs_diff']}, {seconds:.2f} s")
    notes = ["Compared voxel by voxel with PLUS's own reconstruction of the same sweep with the same "
             "device set (PlusLibData's reference volume): the same grid and the same values mean the "
             "same arithmetic, not just a similar picture."]
    return {"numbers": numbers, "pngs": [folder / "spine_nn_late.png"], "files": [folder / "spine_nn_late.nrrd"],
            "notes": notes}


def step_tracking(out: Path, say: Callable[[str], None], n_frames: int = 64) -> dict:
    from freehand3d.compound.volume import reconstruct, save_preview
    from freehand3d.io import write_sweep
    from freehand3d.io.volumes import write_volume
    from freehand3d.simulate import simulate_freehand
    from freehand3d.tracking import load_dualtrack, track
    from freehand3d.tracking.workflows import evaluate_poses, plot_trajectories, sweep_dualtrack_poses, sweep_spacing

    folder = out / "tracking"
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sweep, _truth = simulate_freehand(n_frames=n_frames, seed=7)
    write_sweep(sweep, folder / "simulated_sweep.igs.mha")
    model = load_dualtrack(TINY_CHECKPOINT)
    tracked = track(sweep, model, device="cpu")
    write_sweep(tracked, folder / "tracked.igs.mha")
    pred = sweep_dualtrack_poses(tracked)
    gt = sweep_dualtrack_poses(sweep)
    metrics = evaluate_poses(pred, gt, sweep_spacing(sweep), sweep.frame_shape)
    zero = evaluate_poses(np.tile(np.eye(4), (len(gt), 1, 1)), gt, sweep_spacing(sweep), sweep.frame_shape)
    baselines = _constant_velocity_baselines(sweep, gt)
    steps = _step_statistics(pred, gt)
    plot_trajectories(folder / "trajectory.png", pred, gt,
                      title=f"simulated sweep, {n_frames} frames: tiny DualTrack (predicted) vs simulation truth")
    # the same frames reconstructed with the true and with the predicted trajectory, in frame 0's image frame
    true_img = reconstruct(_in_first_frame(sweep), spacing=0.5, method="nearest", compounding="mean")
    pred_img = reconstruct(tracked, spacing=0.5, method="nearest", compounding="mean",
                           image_to_reference="ImageToReference")
    write_volume(true_img, folder / "volume_true_poses.nrrd")
    write_volume(pred_img, folder / "volume_predicted_poses.nrrd")
    save_preview(true_img, folder / "volume_true_poses.png",
                 title="reconstructed with the TRUE poses (simulation ground truth), in frame 0's image frame")
    save_preview(pred_img, folder / "volume_predicted_poses.png",
                 title="reconstructed with the PREDICTED poses (tiny DualTrack), in frame 0's image frame")
    seconds = time.perf_counter() - t0
    numbers = {
        "frames": str(n_frames),
        "GPE_mm": f"{metrics['GPE']:.3f}",
        "GPE_zero_motion_mm": f"{zero['GPE']:.3f}",
        "LPE_mm": f"{metrics['LPE']:.3f}",
        "FDR_pct": f"{metrics['FDR_pct']:.2f}",
        "FDR_zero_motion_pct": f"{zero['FDR_pct']:.2f}",
        "max_drift_mm": f"{metrics['max_drift_mm']:.3f}",
        "GPE_constant_velocity_mm": f"{baselines['measured']['GPE']:.3f}",
        "GPE_constant_velocity_true_mean_step_mm": f"{baselines['oracle']['GPE']:.3f}",
        "GPE_decorrelation_tracker_mm": f"{baselines['decorrelation']['GPE']:.3f}",
        "elevation_error_mm (tiny / const. velocity / decorrelation)": (
            f"{float(np.abs(pred[:, 2, 3] - gt[:, 2, 3]).mean()):.3f} / "
            f"{baselines['measured']['elevation_error_mm']:.3f} / "
            f"{baselines['decorrelation']['elevation_error_mm']:.3f}"),
        "step_z_std_predicted_mm": f"{steps['z_std_pred']:.4f}",
        "step_z_std_true_mm": f"{steps['z_std_true']:.4f}",
        "step_x_correlation_predicted_vs_true": f"{steps['x_corr']:.2f}",
        "seconds": f"{seconds:.1f}",
    }
    gpe = metrics["GPE"]
    better = [name for name, value in (("zero motion", zero["GPE"]), ("constant velocity (speckle-measured speed)",
                                       baselines["measured"]["GPE"]),
                                      ("the speckle-decorrelation + in-plane registration tracker",
                                       baselines["decorrelation"]["GPE"]),
                                      ("constant velocity with the true mean step", baselines["oracle"]["GPE"]))
              if value < gpe]
    notes = [
        "GPE/LPE: mean distance (mm) between every pixel placed with the predicted and with the true "
        "poses, over all frames (GPE, relative to frame 0) and frame to frame (LPE); FDR: final drift "
        "as a percentage of the distance travelled.",
        "Baselines on the same frames: zero motion (every frame at frame 0); constant velocity at the "
        "elevational speed speckle decorrelation measures (no checkpoint); the classical "
        "speckle-decorrelation tracker (elevational step per frame pair from the decorrelation of a grid of "
        "patches, in-plane motion by patch registration; no checkpoint, but its decorrelation curve was fitted on "
        "other sweeps of this same simulator, seeds 100-101, so it knows the simulator's elevational "
        "point-spread width, which real tissue does not give for free); and constant velocity with "
        "the *true* mean step of this sweep, an oracle no tracker has, which tells whether the model "
        "learned more than an average motion.",
        f"The model's per-frame steps are almost constant: elevational step std {steps['z_std_pred']:.4f} mm "
        f"against {steps['z_std_true']:.4f} mm in the truth, and its in-plane x steps correlate "
        f"{steps['x_corr']:+.2f} with the true ones.",
        ("The tiny model (trained for the demo only, on simulated sweeps) is worse than: " + "; ".join(better) + "."
         if better else "The tiny model beats all four baselines on this sweep."),
        "The two volume pictures are the same frames reconstructed with the true poses and with the "
        "predicted ones, both in frame 0's image frame (mm): differences are tracking errors.",
        "elevation_error_mm: mean |error| of the image centre's out-of-plane position over the frames, "
        "the error speckle decorrelation is built to reduce.",
    ]
    say(f"tracking: {n_frames} simulated frames, tiny DualTrack GPE {numbers['GPE_mm']} mm "
        f"(zero-motion {numbers['GPE_zero_motion_mm']}), FDR {numbers['FDR_pct']} % "
        f"(zero-motion {numbers['FDR_zero_motion_pct']}), {seconds:.1f} s")
    pngs = [folder / "trajectory.png", folder / "volume_true_poses.png", folder / "volume_predicted_poses.png"]
    return {"numbers": numbers, "pngs": pngs, "files": [folder / "tracked.igs.mha"], "notes": notes}


def _constant_velocity_baselines(sweep, gt_poses) -> dict:
    """GPE etc. of the checkpoint-free trackers (freehand3d.tracking.baselines): constant velocity at the
    elevational speed speckle decorrelation measures, the same with the true mean step of this sweep
    (an oracle), and the speckle-decorrelation + in-plane registration tracker."""
    from freehand3d import geometry
    from freehand3d.tracking.baselines import constant_velocity, decorrelation, mean_step, score
    from freehand3d.tracking.workflows import centred_pixel_to_image, sweep_spacing

    spacing = sweep_spacing(sweep)
    truth = geometry.compose(gt_poses, centred_pixel_to_image(spacing, sweep.frame_shape))
    measured = constant_velocity(sweep, spacing=spacing)
    oracle = constant_velocity(sweep, step=mean_step([gt_poses]), spacing=spacing)
    return {"measured": score(measured, truth, spacing, sweep.frame_shape),
            "oracle": score(oracle, truth, spacing, sweep.frame_shape),
            "decorrelation": score(decorrelation(sweep, spacing=spacing), truth, spacing, sweep.frame_shape)}


def _step_statistics(pred_poses, gt_poses) -> dict:
    """Spread of the per-frame steps (frame i+1 in frame i) of the prediction and of the truth."""
    from freehand3d import geometry

    def steps(poses):
        return geometry.matrix_to_params(geometry.invert(poses[:-1]) @ poses[1:], "xyz", degrees=True)

    p, t = steps(pred_poses), steps(gt_poses)
    x_corr = float(np.corrcoef(p[:, 0], t[:, 0])[0, 1]) if p[:, 0].std() > 0 and t[:, 0].std() > 0 else float("nan")
    return {"z_std_pred": float(p[:, 2].std()), "z_std_true": float(t[:, 2].std()), "x_corr": x_corr}


def _in_first_frame(sweep):
    """The sweep with ImageToReference re-expressed relative to frame 0's DualTrack image frame, so
    volumes from true and predicted poses share one coordinate system."""
    from freehand3d import geometry
    from freehand3d.tracking.workflows import centred_pixel_to_image, sweep_dualtrack_poses, sweep_spacing

    poses = sweep_dualtrack_poses(sweep)
    c = centred_pixel_to_image(sweep_spacing(sweep), sweep.frame_shape)
    out = sweep.copy()
    out.transforms, out.valid = {}, {}
    out.image_to_probe = None
    out.set_transform("ImageToReference", geometry.compose(poses, c))
    return out


def step_ulm(out: Path, say: Callable[[str], None]) -> dict:
    try:
        import pymust  # noqa: F401
    except ImportError:
        msg = 'skipped: install the optional extra with `pip install -e ".[ulm-sim]"` (PyMUST) to run it'
        say(f"ulm: {msg}")
        return {"numbers": {"status": msg}, "pngs": [], "files": []}
    from freehand3d.ulm.demo import run_ulm_demo

    folder = out / "ulm"
    numbers, pngs = run_ulm_demo(folder)
    say("ulm: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))
    return {"numbers": numbers, "pngs": pngs, "files": []}


def write_report(out: Path, sections: dict[str, dict], seconds: float) -> Path:
    from freehand3d import __version__
    from freehand3d._atomic import write_text_atomic

    lines = [f"# freehand3d {__version__} demo report", "",
             f"Total time: {seconds:.1f} s on {os.cpu_count()} CPU cores.", ""]
    for title, section in sections.items():
        lines += [f"## {title}", ""]
        if "error" in section:
            lines += [f"**failed:** {section['error']}", ""]
            continue
        lines += ["| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in section["numbers"].items()]
        lines.append("")
        for note in section.get("notes", []):
            lines += [f"- {note}"]
        if section.get("notes"):
            lines.append("")
        for png in section["pngs"]:
            rel = os.path.relpath(png, out)
            lines.append(f"![{Path(rel).stem}]({rel})")
        for f in section["files"]:
            lines.append(f"- `{os.path.relpath(f, out)}`")
        lines.append("")
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def run_demo(out: str | os.PathLike = "demo-out", say: Callable[[str], None] = print,
             steps: tuple[str, ...] = ("calibration", "reconstruction", "tracking", "ulm")) -> Path:
    """Run the demo steps into ``out`` and return the path of ``report.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runners = {
        "calibration": ("a. Calibration of the PLUS fCal 1.2 recording", step_calibration),
        "reconstruction": ("b. Reconstruction of the PLUS spine-phantom sweep", step_reconstruction),
        "tracking": ("c. Sensorless tracking of a simulated sweep", step_tracking),
        "ulm": ("d. Geometric ULM vs DAS+WA", step_ulm),
    }
    sections = {}
    for name in steps:
        title, fn = runners[name]
        sections[title] = fn(out, say)
    report = write_report(out, sections, time.perf_counter() - t0)
    say(f"report: {report}")
    return report
