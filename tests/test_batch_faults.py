"""The batch faults of issue 13, one test each (in-process runner, scheduler="none": no cluster):
leftover temp files of a killed worker, settings in the report, a rerun with other settings
(refused, or recomputed with --overwrite), --image-to-reference for .h5 sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from _bad_inputs import run_cli
from freehand3d.batch import run_batch
from freehand3d.errors import ConfigError
from freehand3d.io import read_sweep, write_sweep


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    from freehand3d.simulate import simulate_freehand

    folder = tmp_path_factory.mktemp("faults")
    rows = []
    for k, name in enumerate(("a.igs.mha", "b.h5")):
        sweep, _ = simulate_freehand(n_frames=6, frame_size=(40, 48), seed=20 + k)
        write_sweep(sweep, folder / name)
        rows.append({"sweep_id": f"s{k}", "path": name})
    with open(folder / "sweeps.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["sweep_id", "path"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


def _csv_of(sweeps, sweep_id):
    """A one-row sweep list for ``sweep_id`` (s0: the .igs.mha, s1: the DualTrack .h5)."""
    rows = {"s0": "a.igs.mha", "s1": "b.h5"}
    path = sweeps / f"only-{sweep_id}.csv"
    path.write_text(f"sweep_id,path\n{sweep_id},{rows[sweep_id]}\n")
    return path


def test_leftover_temp_files_of_a_killed_worker_are_removed(sweeps, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".tmp-0123abcd-s0.nrrd"  # what atomic_path leaves when the process is killed mid-write
    leftover.write_bytes(b"half a volume")
    unrelated = out / ".tmp-notes.txt"  # not ours: kept
    unrelated.write_text("keep")
    report = run_batch("reconstruct", _csv_of(sweeps, "s0"), out, scheduler="none", spacing=1.0)
    assert report.ok and not leftover.exists() and unrelated.exists()
    assert report.removed_leftovers == [leftover.name]
    assert json.loads((out / "batch-reconstruct.json").read_text())["removed_leftovers"] == [leftover.name]


def test_report_holds_the_settings(sweeps, tmp_path):
    out = tmp_path / "out"
    run_batch("reconstruct", _csv_of(sweeps, "s0"), out, scheduler="none", spacing=1.0, method="linear",
              fill_holes="nn:3")
    settings = json.loads((out / "batch-reconstruct.json").read_text())["settings"]
    assert settings["operation"] == "reconstruct" and settings["suffix"] == ".nrrd"
    assert settings["options"] == {"spacing": 1.0, "method": "linear", "fill_holes": "nn:3"}


def test_rerun_with_other_settings_is_refused_and_overwrite_recomputes(sweeps, tmp_path):
    csv_path, out = _csv_of(sweeps, "s0"), tmp_path / "out"
    run_batch("reconstruct", csv_path, out, scheduler="none", spacing=1.0)
    volume = out / "s0.nrrd"
    assert sitk.ReadImage(str(volume)).GetSpacing() == (1.0, 1.0, 1.0)
    before = volume.read_bytes()
    # same settings: resumable, the output is skipped
    assert run_batch("reconstruct", csv_path, out, scheduler="none", spacing=1.0).n_skipped == 1
    # another spacing: refused before any work, nothing touched (CLI: one line, exit 2)
    with pytest.raises(ConfigError, match="spacing: 1.0 -> 2.0"):
        run_batch("reconstruct", csv_path, out, scheduler="none", spacing=2.0)
    res = run_cli(["batch", "reconstruct", "--csv", csv_path, "--out", out, "--scheduler", "none", "--spacing", "2"])
    assert res.code == 2 and "--overwrite" in res.stderr and res.exception is None, res.stderr
    assert volume.read_bytes() == before
    # a device or memory limit does not change the volume: not a reason to refuse
    assert run_batch("reconstruct", csv_path, out, scheduler="none", spacing=1.0, device="cpu").n_skipped == 1
    # --overwrite recomputes with the new settings
    res = run_cli(["batch", "reconstruct", "--csv", csv_path, "--out", out, "--scheduler", "none", "--spacing", "2",
                   "--overwrite"])
    assert res.code == 0, res.stderr + (res.exception or "")
    assert sitk.ReadImage(str(volume)).GetSpacing() == (2.0, 2.0, 2.0)
    assert json.loads((out / "batch-reconstruct.json").read_text())["settings"]["options"]["spacing"] == 2.0


def test_image_to_reference_lets_h5_sweeps_be_batched(sweeps, tmp_path):
    """A DualTrack .h5 sweep has ProbeToTracker and a calibration but no Reference frame: the default
    ImageToReference fails (one line in the report), --image-to-reference ImageToTracker works and
    gives the volume `reconstruct` gives."""
    from freehand3d.compound import reconstruct

    csv_path = _csv_of(sweeps, "s1")
    failed = run_batch("reconstruct", csv_path, tmp_path / "default", scheduler="none", spacing=1.0)
    assert failed.n_failed == 1 and "Reference" in failed.failed[0].error
    res = run_cli(["batch", "reconstruct", "--csv", csv_path, "--out", tmp_path / "out", "--scheduler", "none",
                   "--spacing", "1", "--image-to-reference", "ImageToTracker"])
    assert res.code == 0, res.stderr + (res.exception or "")
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "s1.nrrd")))
    direct = reconstruct(read_sweep(sweeps / "b.h5"), spacing=1.0, image_to_reference="ImageToTracker")
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(direct))
