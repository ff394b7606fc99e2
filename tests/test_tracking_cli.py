"""`freehand3d track / evaluate / train` through typer's CliRunner."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from freehand3d.cli import app
from freehand3d.errors import InputError
from freehand3d.io import read_sweep, write_sweep
from freehand3d.sweep import Sweep
from freehand3d.tracking.workflows import centred_pixel_to_image

sys.path.insert(0, str(Path(__file__).parent))
from _tracking_synth import make_dataset, shift_sweep, small_config  # noqa: E402

PLUS_DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
SPACING = (0.3, 0.3)
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sweep_from_tracking(frames, tracking):
    """A PLUS-style sweep whose ImageToReference = tracking @ centred pixel_to_image."""
    itp = centred_pixel_to_image(SPACING, frames.shape[1:])
    return Sweep(frames=frames, spacing=SPACING, transforms={"ProbeToReference": tracking}, image_to_probe=itp)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Ground truth: 8 frames (480 x 640) moving 2 px = 0.6 mm per frame along x; and a zero-motion
    'prediction' of the same frames."""
    folder = tmp_path_factory.mktemp("cli")
    frames, tracking = shift_sweep(8, shape=(480, 640), shift_px=2, seed=5)
    gt = folder / "gt.igs.mha"
    zero = folder / "zero.igs.mha"
    write_sweep(_sweep_from_tracking(frames, tracking), gt)
    write_sweep(_sweep_from_tracking(frames, np.tile(np.eye(4), (8, 1, 1))), zero)
    return gt, zero


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    from freehand3d.tracking import save_checkpoint
    from freehand3d.tracking.model import DualTrack

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "small.pt"
    save_checkpoint(DualTrack(small_config()).eval(), path)
    return path


def test_evaluate_hand_computed_zero_motion(sweeps, tmp_path):
    gt, zero = sweeps
    landmarks = tmp_path / "landmarks.csv"
    landmarks.write_text("3,100,200\n7,640,480\n")  # frame (>= 1), x, y (1-based pixels)
    result = runner.invoke(app, ["evaluate", str(zero), str(gt), "--json", "--landmarks", str(landmarks)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    # frame k is off by a pure translation of 0.6 k mm at every pixel: GPE = mean_k=1..7 0.6 k = 0.6 * 4
    # measured max |diff| 4.4e-16 (rel 1.9e-16) (AMD EPYC); tolerance > 1000x that
    assert metrics["GPE"] == pytest.approx(0.6 * 4, rel=1e-6)
    # measured max |diff| 4.4e-16 (rel 1.9e-16) (AMD EPYC); tolerance > 1000x that
    assert metrics["GPE_5pt"] == pytest.approx(0.6 * 4, rel=1e-6)
    assert metrics["LPE"] == pytest.approx(0.6, rel=1e-6)  # measured max |diff| 3.3e-16 (rel 5.6e-16) (AMD EPYC); tolerance > 1000x that
    assert metrics["GLE"] == pytest.approx((0.6 * 3 + 0.6 * 7) / 2, rel=1e-6)  # measured: exact (max |diff| 0, AMD EPYC)
    assert metrics["LLE"] == pytest.approx(0.6, rel=1e-6)  # measured max |diff| 1.4e-15 (rel 2.4e-15) (AMD EPYC); tolerance > 1000x that
    assert metrics["FDR_pct"] == pytest.approx(100.0)  # measured: exact (max |diff| 0, AMD EPYC)
    # measured max |diff| 2.7e-15 (rel 6.3e-16) (AMD EPYC); tolerance > 1000x that
    assert metrics["max_drift_mm"] == pytest.approx(0.6 * 7, rel=1e-6)
    assert metrics["n_frames"] == 8


def test_evaluate_table_and_perfect_prediction(sweeps):
    gt, _ = sweeps
    result = runner.invoke(app, ["evaluate", str(gt), str(gt)])
    assert result.exit_code == 0, result.output
    assert "GPE" in result.output and "final drift rate" in result.output
    metrics = json.loads(runner.invoke(app, ["evaluate", str(gt), str(gt), "--json"]).output)
    # measured: exact (max |diff| 0, AMD EPYC)
    assert metrics["GPE"] == pytest.approx(0.0, abs=1e-9) and metrics["max_drift_mm"] == pytest.approx(0.0, abs=1e-9)


def test_track_writes_a_tracked_sweep_and_a_plot(sweeps, small_checkpoint, tmp_path):
    gt, _ = sweeps
    out, plot = tmp_path / "tracked.igs.mha", tmp_path / "trajectory.png"
    result = runner.invoke(
        app, ["track", str(gt), "--checkpoint", str(small_checkpoint), "-o", str(out), "--device", "cpu", "--plot", str(plot)]
    )
    assert result.exit_code == 0, result.output
    tracked = read_sweep(out)
    assert len(tracked) == 8
    np.testing.assert_array_equal(tracked.frames, read_sweep(gt).frames)
    poses = tracked.image_to("Reference")
    assert np.isfinite(poses).all()
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"
    assert "GPE" in result.output  # the input had poses: metrics are printed


def test_track_rejects_frames_of_the_wrong_size(small_checkpoint, tmp_path):
    # real PLUS recording: 820 x 616 frames, not the 640 x 480 DualTrack needs
    result = runner.invoke(
        app,
        ["track", str(PLUS_DATA / "SpinePhantomFreehand.igs.mha"), "-c", str(small_checkpoint), "-o", str(tmp_path / "x.mha")],
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "480" in str(result.exception)
    assert not (tmp_path / "x.mha").exists()


def test_train_command_runs_and_resumes(tmp_path, small_checkpoint):
    csv_path = make_dataset(tmp_path / "data", n_train=2, n_val=1, n_frames=12)
    out = tmp_path / "run"
    base = ["train", "--csv", str(csv_path), "--out", str(out), "--device", "cpu"]
    args = base + ["--stage", "fusion", "--init", str(small_checkpoint), "--epochs", "1", "--window", "8", "--batch-size", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 1
    result = runner.invoke(app, base + ["--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0, 1]
    bad = runner.invoke(app, ["train", "--csv", str(csv_path), "--out", str(out), "--stage", "bogus"])
    assert bad.exit_code != 0 and "bogus" in str(bad.exception)


SHIPPED = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt"


def test_shipped_tiny_checkpoint_loads_and_tracks(sweeps):
    from freehand3d.tracking import load_dualtrack, track

    assert SHIPPED.stat().st_size <= 20 * 2**20
    model = load_dualtrack(SHIPPED)  # strict: every key present with its shape
    assert model.load_report.ok and model.config.local_size == 128 and model.config.global_size == 112
    assert model.checkpoint_metadata["stage"] == "finetune"
    tracked = track(read_sweep(sweeps[0]), model, device="cpu")
    steps = np.linalg.norm(np.diff(tracked.image_to("Reference")[:, :3, 3], axis=0), axis=1)
    assert np.isfinite(steps).all() and steps.max() < 5.0  # mm per frame: a plausible hand motion (measured max 0.357 (AMD EPYC))


def test_track_command_with_preset_tiny_and_the_shipped_checkpoint(sweeps, tmp_path):
    out = tmp_path / "tracked.igs.mha"
    result = runner.invoke(app, ["track", str(sweeps[0]), "-c", str(SHIPPED), "--preset", "tiny", "-o", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    tracked = read_sweep(out)
    assert tracked.metadata["DualTrackPreset"] == "tiny"
    poses = tracked.image_to("Reference")
    assert poses.shape == (8, 4, 4) and np.isfinite(poses).all()
    # measured: exact (max |diff| 0, AMD EPYC)
    np.testing.assert_allclose(poses[0], centred_pixel_to_image(SPACING, (480, 640)), atol=1e-9)  # frame 0 = origin


def test_track_rejects_a_sweep_too_short_for_the_model(sweeps, tmp_path):
    one = tmp_path / "one.igs.mha"
    write_sweep(read_sweep(sweeps[0]).subset([0]), one)
    result = runner.invoke(app, ["track", str(one), "-c", str(SHIPPED), "-o", str(tmp_path / "x.mha")])
    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert "at least 2 frames" in str(result.exception) and "one.igs.mha" in str(result.exception)
    assert not (tmp_path / "x.mha").exists()


def test_tiny_preset_describes_the_shipped_checkpoint():
    from freehand3d.tracking import load_dualtrack
    from freehand3d.tracking.model import DualTrack, get_config

    raw = torch.load(SHIPPED, weights_only=True)
    assert raw["config"] == get_config("tiny").to_dict()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DualTrack("tiny").state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in raw["state_dict"].items()}
    assert load_dualtrack(SHIPPED, preset="tiny").load_report.ok


def test_a_checkpoint_of_another_preset_names_the_mismatched_keys():
    from freehand3d.errors import CheckpointError
    from freehand3d.tracking import load_dualtrack

    with pytest.raises(CheckpointError) as err:
        load_dualtrack(SHIPPED, preset="dualtrack-2024")
    message = str(err.value)
    assert "dualtrack-2024" in message and "shape-mismatched" in message
    assert "local_encoder.cnn.stem.0.weight (8, 1, 1, 7, 7) vs local_encoder.cnn.stem.0.weight (45, 1, 1, 7, 7)" in message
    assert "missing: local_encoder.pool.layers.1.attn_norm.weight" in message  # tiny has 1 pooling layer, 2024 has 4


@pytest.mark.slow
def test_shipped_tiny_checkpoint_beats_zero_motion_on_a_new_simulated_sweep():
    from freehand3d.simulate.freehand import simulate_freehand
    from freehand3d.tracking import load_dualtrack, track
    from freehand3d.tracking.workflows import evaluate_poses, sweep_dualtrack_poses

    sweep, _ = simulate_freehand(n_frames=64, seed=4242)  # a seed the training never saw
    gt = sweep_dualtrack_poses(sweep)
    pred = sweep_dualtrack_poses(track(sweep, load_dualtrack(SHIPPED), device="cpu"))
    ours = evaluate_poses(pred, gt, sweep.spacing, sweep.frame_shape)
    zero = evaluate_poses(np.tile(np.eye(4), (len(gt), 1, 1)), gt, sweep.spacing, sweep.frame_shape)
    assert ours["GPE"] < zero["GPE"]
