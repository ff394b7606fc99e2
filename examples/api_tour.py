"""A tour of the freehand3d Python API, one step per section.

1. read a PLUS sweep and look at it (frames, spacing, transforms and their validity);
2. geometry: 6-DoF parameters <-> 4x4, composition, inversion, applying transforms to points;
3. the frame graph: any ``XToY`` composed from the stored links (PLUS's transform repository);
4. simulate a freehand sweep with exact ground truth;
5. reconstruct it into a volume and compare with the true echogenicity;
6. write the sweep and the volume (atomically) and read them back.

    python examples/api_tour.py --out out/tour
    python examples/api_tour.py --out out/tour --fast      # smaller simulated sweep and coarser volume
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="16 frames of 120 x 160 and 1 mm voxels.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}

    import numpy as np

    from freehand3d import geometry
    from freehand3d.io import read_sweep, write_sweep

    # 1. a real PLUS recording: frames (N, H, W) uint8 and named per-frame transforms with validity
    print("\n# 1. read a sweep")
    sweep = read_sweep(DATA / "SpinePhantomFreehand.igs.mha")
    print(sweep)
    probe_to_tracker, valid = sweep.transform("ProbeToTracker")
    print(f"ProbeToTracker: {probe_to_tracker.shape}, {valid.sum()} of {len(valid)} valid")
    summary["spine_frames"] = len(sweep)

    # 2. geometry: mm and radians inside, degrees only when asked for; AToB maps A coordinates into B
    print("\n# 2. geometry")
    params = np.array([10.0, -5.0, 2.0, 30.0, 0.0, 45.0])  # tx ty tz (mm), rx ry rz (degrees)
    pose = geometry.params_to_matrix(params, "xyz", degrees=True)
    back = geometry.matrix_to_params(pose, "xyz", degrees=True)
    assert np.allclose(back, params)
    round_trip = geometry.compose(geometry.invert(pose), pose)
    print(f"params -> 4x4 -> params: {np.round(back, 6)}; pose^-1 . pose = I: {np.allclose(round_trip, np.eye(4))}")
    point = geometry.apply(pose, np.array([1.0, 0.0, 0.0]))
    print(f"the pose maps (1, 0, 0) to {np.round(point, 3)}")

    # 3. frame graph: ImageToReference = ReferenceToTracker^-1 . ProbeToTracker . ImageToProbe
    print("\n# 3. frame graph")
    from freehand3d.io.plus_config import read_device_set

    config = read_device_set(DATA / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml")
    sweep.image_to_probe = config.coordinate_definitions["ImageToProbe"].matrix  # the recording's calibration
    graph = geometry.FrameGraph({**sweep.transforms, "ImageToProbe": sweep.image_to_probe})
    print(f"ImageToReference via {graph.path_names('ImageToReference')}")
    image_to_reference = sweep.image_to("Reference")  # the same, through the Sweep
    assert np.allclose(image_to_reference, graph.get("ImageToReference"))
    corners = np.c_[geometry.frame_corners(*sweep.frame_shape), np.zeros(4)]  # pixels (x, y, 0)
    print(f"frame-0 corners in Reference mm:\n{np.round(geometry.apply(image_to_reference[0], corners), 1)}")
    centre = geometry.apply(image_to_reference, np.array([sweep.frame_shape[1] / 2, sweep.frame_shape[0] / 2, 0.0]))
    path_mm = float(np.linalg.norm(np.diff(centre, axis=0), axis=1).sum())
    print(f"the image centre travels {path_mm:.1f} mm in Reference over {len(sweep)} frames")
    summary["spine_centre_path_mm"] = path_mm

    # 4. simulate a freehand sweep with exact poses and the true echogenicity volume
    print("\n# 4. simulate")
    from freehand3d.simulate import simulate_freehand

    n, shape = (16, (120, 160)) if args.fast else (60, (240, 320))
    sim, truth = simulate_freehand(n_frames=n, frame_size=shape, seed=1)
    print(sim)
    error = np.abs(sim.image_to("Reference") - truth["image_to_reference"]).max()
    print(f"poses from the transform chain vs truth: max |difference| {error:.2e}")
    summary["simulated_pose_error"] = float(error)

    # 5. reconstruct (PLUS-compatible compounding) into a SimpleITK image
    print("\n# 5. reconstruct")
    import SimpleITK as sitk

    from freehand3d.compound import reconstruct

    spacing = 1.0 if args.fast else 0.5
    volume = reconstruct(sim, spacing=spacing, method="linear", compounding="mean")
    voxels = sitk.GetArrayFromImage(volume)
    print(f"volume {volume.GetSize()} voxels of {spacing} mm at origin {np.round(volume.GetOrigin(), 1)}; "
          f"{100 * (voxels > 0).mean():.1f} % filled")
    summary["volume_size"] = list(volume.GetSize())
    summary["volume_filled_fraction"] = float((voxels > 0).mean())

    # 6. write (atomic) and read back
    print("\n# 6. write and read back")
    from freehand3d._atomic import write_text_atomic
    from freehand3d.io.volumes import read_volume, write_volume

    write_sweep(sim, args.out / "simulated.igs.mha")
    write_volume(volume, args.out / "simulated.nrrd")
    again = read_sweep(args.out / "simulated.igs.mha")
    same_frames = bool(np.array_equal(again.frames, sim.frames))
    pose_diff = float(np.abs(again.image_to("Reference") - sim.image_to("Reference")).max())
    reread = read_volume(args.out / "simulated.nrrd")
    same_volume = bool(np.array_equal(sitk.GetArrayFromImage(reread), voxels))
    print(f"sweep round trip: frames equal {same_frames}, poses within {pose_diff:.1e} mm; volume equal {same_volume}")
    summary.update({"roundtrip_frames_equal": same_frames, "roundtrip_pose_diff_mm": pose_diff,
                    "roundtrip_volume_equal": same_volume})
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
