"""Bad inputs of every ``freehand3d ulm`` subcommand: exit 2, one error line, no partial output."""

from pathlib import Path

import numpy as np
import pytest

from _bad_inputs import Case, check_case
from freehand3d.ulm.files import save_rf
from freehand3d.ulm.probe import LinearProbe

PROBE = LinearProbe()


def _rf_file(tmp: Path, name="rf.npz", drop=(), **override):
    """A small valid rf.npz (2 frames, 64 samples) with keys dropped or overridden."""
    rf = np.zeros((2, 64, PROBE.n_elements), np.float32)
    rf[:, 30, :] = 1.0
    save_rf(tmp / "tmp_src.npz", rf, PROBE, tx_angle=0.0, t0=0.0)
    with np.load(tmp / "tmp_src.npz") as d:
        content = {k: d[k] for k in d.files if k not in drop}
    (tmp / "tmp_src.npz").unlink()
    content.update({k: np.asarray(v) for k, v in override.items()})
    np.savez(tmp / name, **content)


def _points(tmp: Path, text: str, name="p.csv"):
    (tmp / name).write_text(text, encoding="utf-8")


def _gt(tmp: Path, frames=2):
    from freehand3d.ulm.files import save_ground_truth

    lp = np.full((1, 3, frames), np.nan)
    lp[0, :, 0] = (0.0, 5.0, 1.0)
    save_ground_truth(tmp / "gt.npz", lp, PROBE)


GOOD_POINTS = "# wavelength_mm=0.09856\nframe,x_mm,z_mm\n0,0.1,5.0\n1,0.2,5.1\n"

LOC = ["ulm", "localize", "{tmp}/rf.npz", "-o", "{tmp}/out.csv"]

CASES = [
    # localize: file and metadata
    Case("localize-missing-file", ["ulm", "localize", "{tmp}/nope.npz", "-o", "{tmp}/out.csv"], mention=["nope.npz"]),
    Case("localize-not-npz", LOC, setup=lambda t: (t / "rf.npz").write_bytes(b"\x00garbage"), mention=["rf.npz"]),
    Case("localize-no-rf-array", LOC, setup=lambda t: np.savez(t / "rf.npz", x=np.zeros(3)), mention=["'rf'"]),
    Case("localize-missing-fs", LOC, setup=lambda t: _rf_file(t, drop=("probe_sampling_frequency",)), mention=["probe_sampling_frequency"]),
    Case("localize-missing-fc", LOC, setup=lambda t: _rf_file(t, drop=("probe_center_frequency",)), mention=["probe_center_frequency"]),
    Case("localize-missing-angle", LOC, setup=lambda t: _rf_file(t, drop=("tx_angle",)), mention=["tx_angle"]),
    Case("localize-missing-t0", LOC, setup=lambda t: _rf_file(t, drop=("t0",)), mention=["t0"]),
    Case("localize-missing-c", LOC, setup=lambda t: _rf_file(t, drop=("probe_speed_of_sound",)), mention=["speed_of_sound"]),
    Case("localize-c-in-m-per-s", LOC, setup=lambda t: _rf_file(t, probe_speed_of_sound=1540.0), mention=["m/s"]),
    Case("localize-c-in-km-per-s", LOC, setup=lambda t: _rf_file(t, probe_speed_of_sound=1.54), mention=["mm/s"]),
    Case("localize-fc-in-mhz", LOC, setup=lambda t: _rf_file(t, probe_center_frequency=15.625), mention=["MHz"]),
    Case("localize-fs-in-mhz", LOC, setup=lambda t: _rf_file(t, probe_sampling_frequency=62.5), mention=["MHz"]),
    Case("localize-fs-below-nyquist", LOC, setup=lambda t: _rf_file(t, probe_sampling_frequency=20e6), mention=["twice"]),
    Case("localize-pitch-in-metres", LOC, setup=lambda t: _rf_file(t, probe_pitch=1e-4), mention=["metres"]),
    Case("localize-angle-in-degrees", LOC, setup=lambda t: _rf_file(t, tx_angle=5.0), mention=["degrees"]),
    Case("localize-t0-in-microseconds", LOC, setup=lambda t: _rf_file(t, t0=2.5), mention=["t0"]),
    Case("localize-nan-fc", LOC, setup=lambda t: _rf_file(t, probe_center_frequency=np.nan), mention=["nan"]),
    Case("localize-complex-iq", LOC, setup=lambda t: _rf_file(t, rf=np.ones((1, 64, 128), complex)), mention=["IQ"]),
    Case("localize-wrong-ndim", LOC, setup=lambda t: _rf_file(t, rf=np.ones((1, 1, 64, 128), np.float32)), mention=["shape"]),
    Case("localize-channel-mismatch", LOC, setup=lambda t: _rf_file(t, probe_n_elements=64), mention=["channels"]),
    Case("localize-all-nan", LOC, setup=lambda t: _rf_file(t, rf=np.full((1, 64, 128), np.nan, np.float32)), mention=["NaN"]),
    Case("localize-pulse-without-times", LOC, setup=lambda t: _rf_file(t, pulse=np.ones(20)), mention=["pulse_t"]),
    Case("localize-pulse-not-centred", LOC, setup=lambda t: _rf_file(t, pulse=np.ones(20), pulse_t=np.arange(20) * 1e-8 + 1e-7), mention=["t = 0"]),
    Case("localize-bad-method", LOC + ["--method", "music"], setup=_rf_file, mention=["--method"]),
    Case("localize-too-many-channels", LOC + ["--channels", "256"], setup=_rf_file, mention=["--channels"]),
    Case("localize-one-channel", LOC + ["--channels", "1"], setup=_rf_file, mention=["--channels"]),
    Case("localize-baseline-negative", LOC + ["--baseline-mm", "-1"], setup=_rf_file, mention=["--baseline-mm"]),
    Case("localize-baseline-in-um", LOC + ["--baseline-mm", "3000"], setup=_rf_file, mention=["--baseline-mm"]),
    Case("localize-false-alarms-zero", LOC + ["--false-alarms", "0"], setup=_rf_file, mention=["--false-alarms"]),
    Case("localize-threshold-positive", LOC + ["--threshold-db", "6"], setup=_rf_file, mention=["--threshold-db"]),
    Case("localize-gulm-option-for-das", LOC + ["--method", "das-wa", "--gap", "3"], setup=_rf_file, mention=["gulm"]),
    Case("localize-coherent-for-das", LOC + ["--method", "das-wa", "--no-coherent"], setup=_rf_file, mention=["gulm"]),
    Case("localize-mat-garbage", ["ulm", "localize", "{tmp}/rec.mat", "-o", "{tmp}/out.csv"], setup=lambda t: (t / "rec.mat").write_bytes(b"not matlab"), mention=["rec.mat"]),
    # evaluate
    Case("evaluate-non-utf8", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: ((t / "p.csv").write_bytes(b"\xff\xfe\x00bad"), _gt(t)), mention=["UTF-8"]),
    Case("evaluate-bad-header", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, "a,b,c\n1,2,3\n"), _gt(t)), mention=["header"]),
    Case("evaluate-two-columns", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, "frame,x_mm,z_mm\n0,1\n"), _gt(t)), mention=["3 columns"]),
    Case("evaluate-nan-point", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, "frame,x_mm,z_mm\n0,nan,5\n"), _gt(t)), mention=["NaN"]),
    Case("evaluate-missing-gt", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: _points(t, GOOD_POINTS), mention=["gt.npz"]),
    Case("evaluate-gt-wrong-shape", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, GOOD_POINTS), np.savez(t / "gt.npz", ListPos=np.zeros((3, 2)))), mention=["ListPos"]),
    Case("evaluate-frames-beyond-gt", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, GOOD_POINTS + "7,0,5\n"), _gt(t)), mention=["frame 7"]),
    Case("evaluate-wavelength-in-m", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz"], setup=lambda t: (_points(t, "# wavelength_mm=0.0000985\nframe,x_mm,z_mm\n"), _gt(t)), mention=["wavelength"]),
    Case("evaluate-bad-convention", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/gt.npz", "--convention", "best"], setup=lambda t: (_points(t, GOOD_POINTS), _gt(t)), mention=["--convention"]),
    # render
    Case("render-non-utf8", ["ulm", "render", "{tmp}/p.csv", "-o", "{tmp}/d.png"], setup=lambda t: (t / "p.csv").write_bytes(b"\xff\xfe\x00bad"), mention=["UTF-8"]),
    Case("render-tiny-pixel", ["ulm", "render", "{tmp}/p.csv", "-o", "{tmp}/d.png", "--pixel-mm", "1e-5"], setup=lambda t: _points(t, GOOD_POINTS + "1,9.0,15.0\n"), mention=["pixel"]),
    Case("render-negative-pixel", ["ulm", "render", "{tmp}/p.csv", "-o", "{tmp}/d.png", "--pixel-mm", "-0.01"], setup=lambda t: _points(t, GOOD_POINTS), mention=["--pixel-mm"]),
    Case("render-no-wavelength", ["ulm", "render", "{tmp}/p.csv", "-o", "{tmp}/d.png"], setup=lambda t: _points(t, "frame,x_mm,z_mm\n0,1,5\n"), mention=["--pixel-mm"]),
    Case("render-bad-gamma", ["ulm", "render", "{tmp}/p.csv", "-o", "{tmp}/d.png", "--gamma", "0"], setup=lambda t: _points(t, GOOD_POINTS), mention=["--gamma"]),
    # simulate
    Case("simulate-zero-frames", ["ulm", "simulate", "-o", "{tmp}/sim", "--frames", "0"], mention=["--frames"]),
    Case("simulate-snr-absurd", ["ulm", "simulate", "-o", "{tmp}/sim", "--snr-db", "300"], mention=["--snr-db"]),
    Case("simulate-angle-radians-for-degrees", ["ulm", "simulate", "-o", "{tmp}/sim", "--angle-deg", "60"], mention=["--angle-deg"]),
    Case("simulate-zero-bubbles", ["ulm", "simulate", "-o", "{tmp}/sim", "--bubbles", "0"], mention=["--bubbles"]),
    Case("simulate-bad-backend", ["ulm", "simulate", "-o", "{tmp}/sim", "--backend", "fieldii"], mention=["--backend"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
