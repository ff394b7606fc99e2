"""Calibrate a tracked ultrasound probe from the bundled PLUS fCal 1.2 N-wire recording.

Shows: reading a PLUS device set (phantom geometry + segmentation settings), N-wire calibration
(dot detection, wire labelling, RANSAC + Levenberg-Marquardt) of the calibration recording, the 3D
point reconstruction error (PRE3D) on the independent validation recording, the comparison with
PLUS's own result for the same data, overlay PNGs of the detections and result.json.

    python examples/calibrate_plus_recording.py --out out/calibration
    python examples/calibrate_plus_recording.py --out out/calibration --fast   # every 6th frame
    python examples/calibrate_plus_recording.py --solver plus --out out/cal    # PLUS's LSQR solver

The same from the command line:
    freehand3d calibrate fCal_Test_Calibration_3NWires.igs.mha --phantom <device set> \
        --validation fCal_Test_Validation_3NWires.igs.mha -o result.json --overlay overlays/
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibration", type=Path, default=DATA / "fCal_Test_Calibration_3NWires.igs.mha")
    parser.add_argument("--validation", type=Path, default=DATA / "fCal_Test_Validation_3NWires.igs.mha")
    parser.add_argument("--device-set", type=Path, default=DATA / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
                        help="PLUS device set: phantom definition and segmentation settings.")
    parser.add_argument("--plus-results", type=Path, default=DATA / "FreehandCalibration3NWires.results.xml",
                        help="PLUS's calibration result for the same recordings (for the comparison); '' to skip.")
    parser.add_argument("--solver", default="ransac-lm", choices=("ransac-lm", "plus", "lm"))
    parser.add_argument("--overlays", type=int, default=4, help="Overlay PNGs of this many calibration frames.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="Every 6th frame of both recordings.")
    args = parser.parse_args(argv)

    import numpy as np

    from freehand3d._atomic import write_text_atomic
    from freehand3d.calibration.metrics import rotation_translation_difference
    from freehand3d.calibration.pipeline import SegmentedSweep, calibrate, write_overlays
    from freehand3d.io import read_sweep
    from freehand3d.io.plus_config import read_device_set, read_plus_calibration_results

    device_set = read_device_set(args.device_set)
    cal, val = read_sweep(args.calibration), read_sweep(args.validation)
    if args.fast:
        cal, val = cal.subset(np.arange(0, len(cal), 6)), val.subset(np.arange(0, len(val), 6))
    result = calibrate(cal, device_set.phantom, val, solver=args.solver, params=device_set.segmentation,
                       keep_candidates=args.overlays > 0)
    summary = result.to_dict()
    print(f"segmented {result.frames_segmented}/{result.frames_total} calibration frames, "
          f"{result.validation_frames_segmented}/{result.validation_frames_total} validation frames")
    print(f"PRE3D calibration {result.pre3d_calibration_mean_mm:.3f} +- {result.pre3d_calibration_std_mm:.3f} mm, "
          f"validation {result.pre3d_validation_mean_mm:.3f} +- {result.pre3d_validation_std_mm:.3f} mm")
    if args.plus_results and Path(args.plus_results).is_file():
        plus = read_plus_calibration_results(args.plus_results)
        angle, shift = rotation_translation_difference(result.image_to_probe, plus.image_to_probe)
        summary["plus_comparison"] = {
            "rotation_difference_deg": float(angle),
            "translation_difference_mm": float(shift),
            "plus_pre3d_validation_mean_mm": plus.reprojection_3d.get("validation_mean_mm"),
            "plus_pre3d_calibration_mean_mm": plus.reprojection_3d.get("calibration_mean_mm"),
        }
        print(f"vs PLUS: ImageToProbe differs by {angle:.3f} deg and {shift:.3f} mm; PLUS's validation PRE3D "
              f"{plus.reprojection_3d.get('validation_mean_mm', float('nan')):.3f} mm")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "result.json", json.dumps(summary, indent=1) + "\n")
    if args.overlays > 0:
        seg = result.calibration
        pick = np.linspace(0, len(cal) - 1, min(args.overlays, len(cal))).round().astype(int)
        subset = SegmentedSweep(seg.labelled[pick], seg.segmented[pick], seg.usable[pick], seg.probe_to_reference[pick],
                                [seg.candidates[i] for i in pick] if seg.candidates else [])
        write_overlays(cal.subset(pick), subset, args.out / "overlays", device_set.phantom, prefix="calibration")
    return summary


if __name__ == "__main__":
    main()
