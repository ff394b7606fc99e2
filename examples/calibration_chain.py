"""The whole fCal calibration chain on a simulated setup with known truth: stylus pivot calibration
-> phantom landmark registration -> temporal calibration -> spatial calibration -> validation ->
a PLUS device set and an ITK .tfm ready for PlusServer and Slicer.

Simulates a tracked stylus (pivoting, then touching the fCal 1.2 phantom's 8 landmarks), and
calibration and validation N-wire recordings whose tracker runs 120 ms late, writes them as PLUS
sequence files, runs the freehand3d commands a user would run on real recordings, and compares each
result with the truth.

    python examples/calibration_chain.py --out out/chain
    python examples/calibration_chain.py --out out/chain --fast      # shorter recordings

The commands it runs (device set: PLUS's fCal 1.2 spatial-calibration set, which has the landmarks):
    freehand3d pivot-calibrate pivot.igs.mha -o pivot.json --config SET.xml --plus-config 1_stylus.xml
    freehand3d register-phantom landmarks.igs.mha --config 1_stylus.xml --detect-landmarks \
        -o registration.json --plus-config 2_registered.xml
    freehand3d temporal-calibrate calibration.igs.mha --phantom 2_registered.xml -o lag.json
    freehand3d calibrate calibration.igs.mha --phantom 2_registered.xml --validation validation.igs.mha \
        --time-offset-s LAG -o calibration.json --plus-config 3_calibrated.xml --tfm ImageToProbe.tfm
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"


def _run(args: list[str]) -> None:
    print("$ freehand3d " + " ".join(str(a) for a in args))
    proc = subprocess.run([sys.executable, "-m", "freehand3d", *map(str, args)], capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"freehand3d {args[0]} failed (exit {proc.returncode})")
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device-set", type=Path, default=DATA / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
                        help="PLUS device set with the phantom (N-wires and landmarks) and segmentation settings.")
    parser.add_argument("--lag", type=float, default=0.12, help="True tracker lag of the simulation (s).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="Shorter N-wire recordings (6 s instead of 12 s).")
    args = parser.parse_args(argv)

    import numpy as np

    from freehand3d.simulate.chain import simulate_setup

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    setup = simulate_setup(lag_s=args.lag, seed=args.seed, duration_s=6.0 if args.fast else 12.0)
    paths = setup.write(out)
    truth = setup.truth

    _run(["pivot-calibrate", paths["pivot"], "-o", out / "pivot.json", "--config", args.device_set,
          "--plus-config", out / "1_stylus.xml"])
    _run(["register-phantom", paths["landmarks"], "--config", out / "1_stylus.xml", "--detect-landmarks",
          "-o", out / "registration.json", "--plus-config", out / "2_registered.xml"])
    _run(["temporal-calibrate", paths["calibration"], "--phantom", out / "2_registered.xml", "-o", out / "lag.json",
          "--blocks", "0" if args.fast else "5"])
    lag = json.loads((out / "lag.json").read_text())["tracker_lag_s"]
    _run(["calibrate", paths["calibration"], "--phantom", out / "2_registered.xml", "--validation",
          paths["validation"], "--time-offset-s", repr(lag), "-o", out / "calibration.json",
          "--plus-config", out / "3_calibrated.xml", "--tfm", out / "ImageToProbe.tfm"])

    pivot = json.loads((out / "pivot.json").read_text())
    reg = json.loads((out / "registration.json").read_text())
    cal = json.loads((out / "calibration.json").read_text())
    tip_err = float(np.linalg.norm(np.array(pivot["stylus_tip_to_stylus"])[:3, 3] - truth["stylus_tip_to_stylus"][:3, 3]))
    ptr = np.array(reg["phantom_to_reference"])
    rel = ptr[:3, :3].T @ truth["phantom_to_reference"][:3, :3]
    reg_mm = float(np.linalg.norm(ptr[:3, 3] - truth["phantom_to_reference"][:3, 3]))
    reg_deg = float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1) / 2, -1, 1))))
    itp = np.array(cal["image_to_probe"])
    h, w = setup.calibration.frame_shape
    grid = np.array([[x, y, 0, 1] for x in np.linspace(0, w - 1, 5) for y in np.linspace(0, h - 1, 5)])
    itp_err = np.linalg.norm((grid @ itp.T - grid @ truth["image_to_probe"].T)[:, :3], axis=1)
    summary = {
        "stylus_tip_error_mm": tip_err,
        "registration_error_mm": reg_mm,
        "registration_error_deg": reg_deg,
        "lag_true_s": truth["lag_s"],
        "lag_estimated_s": float(lag),
        "lag_error_ms": abs(float(lag) - truth["lag_s"]) * 1e3,
        "image_to_probe_error_mean_mm": float(itp_err.mean()),
        "image_to_probe_error_max_mm": float(itp_err.max()),
        "pre3d_validation_mean_mm": cal["pre3d_validation_mean_mm"],
        "device_set": str(out / "3_calibrated.xml"),
        "tfm": str(out / "ImageToProbe.tfm"),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
