"""ULM I/O and robustness: strict RF metadata, .mat readers (PALA, Verasonics; v5 and v7.3), PALA
ListPos, both metric conventions, pulse estimation, noise-floor detection, NaN masking."""

import warnings

import numpy as np
import pytest

from freehand3d.errors import InputError
from freehand3d.simulate.rf import add_noise_snr, simulate_bubbles, simulate_rf
from freehand3d.ulm.files import ULMWarning, listpos_to_pala, load_rf, pala_to_listpos, read_pala_listpos, save_rf, write_pala_listpos
from freehand3d.ulm.metrics import evaluate
from freehand3d.ulm.pipeline import localize, localize_frame
from freehand3d.ulm.probe import LinearProbe

PROBE = LinearProbe()
LAMBDA = PROBE.wavelength


@pytest.fixture(scope="module")
def sim():
    list_pos = simulate_bubbles(2, seed=5, bubbles_per_frame=8)
    return list_pos, simulate_rf(list_pos, PROBE)


def _pala_mat(path, rf, v73=False, angle=0.0):
    """Write rf (frames, samples, channels) in PALA's RF .mat layout (samples x channels x frames)."""
    fields = {
        "RFdata": np.transpose(rf, (1, 2, 0)).astype(np.float64),
        "Trans": {"frequency": PROBE.center_frequency / 1e6, "spacingMm": PROBE.pitch, "lensCorrection": 0.0},
        "Receive": {"decimSampleRate": PROBE.sampling_frequency / 1e6, "startDepth": 0.0},
        "P": {"numTx": 1.0, "angles": angle, "startDepth": 0.0},
        "Resource": {"Parameters": {"speedOfSound": PROBE.speed_of_sound / 1e3}},
    }
    if not v73:
        from scipy.io import savemat

        savemat(path, fields)
        return
    import h5py

    def put(group, key, value):
        if isinstance(value, dict):
            sub = group.create_group(key)
            for k, v in value.items():
                put(sub, k, v)
        else:
            group.create_dataset(key, data=np.atleast_2d(np.asarray(value, float)).T)  # MATLAB column-major

    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            put(f, key, value)


@pytest.mark.parametrize("v73", [False, True])
def test_pala_mat_reader_roundtrip(tmp_path, sim, v73):
    _, rf = sim
    _pala_mat(tmp_path / "pala.mat", rf, v73=v73, angle=0.02)
    back, probe, acq = load_rf(tmp_path / "pala.mat")
    np.testing.assert_allclose(back, rf, atol=1e-6)  # measured: exact (max |diff| 0 over 2 calls)
    assert probe.center_frequency == pytest.approx(PROBE.center_frequency)
    assert probe.sampling_frequency == pytest.approx(PROBE.sampling_frequency)
    assert probe.pitch == pytest.approx(PROBE.pitch) and probe.speed_of_sound == pytest.approx(PROBE.speed_of_sound)
    assert acq["tx_angle"] == pytest.approx(0.02) and acq["t0"] == 0.0  # measured: exact (max |diff| 0, AMD EPYC)


def test_verasonics_reader_takes_the_first_acquisition(tmp_path, sim):
    from scipy.io import savemat

    _, rf = sim
    n = rf.shape[1]
    # RcvData{1}: two acquisitions stacked along the rows, int16, samples x channels x frames
    stacked = np.concatenate([rf, -rf], axis=1)
    scale = 1000 / np.abs(rf).max()
    rcv = np.round(np.transpose(stacked, (1, 2, 0)) * scale).astype(np.int16)
    receive = np.array([(1.0, float(n), 0.0, PROBE.sampling_frequency / 1e6), (n + 1.0, 2.0 * n, 0.0, PROBE.sampling_frequency / 1e6)],
                       dtype=[("startSample", float), ("endSample", float), ("startDepth", float), ("decimSampleRate", float)])
    cell = np.empty((1,), dtype=object)
    cell[0] = rcv
    savemat(tmp_path / "vs.mat", {"RcvData": cell, "Receive": receive, "TX": {"Steer": np.array([0.01, 0.0])},
                                  "Trans": {"frequency": PROBE.center_frequency / 1e6, "spacingMm": PROBE.pitch},
                                  "Resource": {"Parameters": {"speedOfSound": 1540.0}}})
    back, probe, acq = load_rf(tmp_path / "vs.mat")
    # measured: exact (max |diff| 0, AMD EPYC)
    assert back.shape == rf.shape and acq["source"] == "verasonics" and acq["tx_angle"] == pytest.approx(0.01)
    # measured max |diff| 1.8e-04 (AMD EPYC); tolerance 1.2x that
    np.testing.assert_allclose(back / scale, rf, atol=0.6 / scale)  # int16 rounding


def test_mat_reader_checks_units(tmp_path, sim):
    from scipy.io import savemat

    _, rf = sim
    savemat(tmp_path / "hz.mat", {"RFdata": np.transpose(rf, (1, 2, 0)), "Trans": {"frequency": 15.625e6, "spacingMm": 0.1},
                                  "Receive": {"samplesPerWave": 4.0}, "Resource": {"Parameters": {"speedOfSound": 1540.0}}})
    with pytest.raises(InputError, match="looks like Hz"):
        load_rf(tmp_path / "hz.mat")
    savemat(tmp_path / "nofs.mat", {"RFdata": np.transpose(rf, (1, 2, 0)), "Trans": {"frequency": 15.625, "spacingMm": 0.1}, "Receive": {"startDepth": 0.0}})
    with pytest.raises(InputError, match="decimSampleRate"):
        load_rf(tmp_path / "nofs.mat")


@pytest.mark.parametrize("suffix", [".mat", ".npz"])
def test_pala_listpos_roundtrip_in_wavelengths(tmp_path, suffix):
    ours = simulate_bubbles(3, seed=2)
    write_pala_listpos(tmp_path / f"gt{suffix}", ours, LAMBDA)
    pala = listpos_to_pala(ours, LAMBDA)
    present = np.isfinite(ours[:, 0])
    # PALA: x, y, z in wavelengths
    np.testing.assert_allclose(pala[:, 0][present], ours[:, 0][present] / LAMBDA)  # measured: exact (max |diff| 0 over 2 calls)
    np.testing.assert_allclose(pala[:, 2][present], ours[:, 1][present] / LAMBDA)  # measured: exact (max |diff| 0 over 2 calls)
    back = read_pala_listpos(tmp_path / f"gt{suffix}", LAMBDA)
    np.testing.assert_allclose(back[:, :2], ours[:, :2], atol=1e-12)  # measured max |diff| 8.9e-16 over 2 calls
    np.testing.assert_allclose(pala_to_listpos(pala, LAMBDA)[:, :2], ours[:, :2])  # measured max |diff| 8.9e-16 over 2 calls


def test_metric_conventions_differ_where_they_should():
    # one frame, two bubbles 0.2 lambda apart, detections placed so greedy and optimal pairing differ
    lam = 1.0
    truth = np.array([[0.0, 10.0], [0.2, 10.0]])
    det = np.array([[0.11, 10.0], [0.32, 10.0]])
    list_pos = np.concatenate([truth, np.ones((2, 1))], axis=1)[:, :, None]
    points = np.column_stack([np.zeros(2), det])
    r = evaluate(points, list_pos, lam, ssim=False)
    # greedy takes the closest pair first (0.11 -> 0.2, d 0.09), then 0.32 -> 0.0 is beyond lambda/4
    assert r["pala_tp"] == 1 and r["pala_fp"] == 1 and r["pala_fn"] == 1
    # one-to-one minimum total distance pairs both (0.11 and 0.12 < 0.25)
    assert r["tp"] == 2 and r["fp"] == 0
    assert r["error_lambda10"] == pytest.approx((0.11 + 0.12) / 2 / 0.1)  # measured: exact (max |diff| 0, AMD EPYC)
    assert r["rms_error_lambda10"] == pytest.approx(np.sqrt((0.11**2 + 0.12**2) / 2) / 0.1)  # measured: exact (max |diff| 0, AMD EPYC)
    # measured max |diff| 1.1e-16 (rel 1.2e-16) (AMD EPYC); tolerance > 1000x that
    assert r["pala_rmse_lambda10"] == pytest.approx(0.09 / 0.1)  # per-frame mean distance, not an RMS
    assert "rmse_lambda10" not in r
    assert set(evaluate(points, list_pos, lam, ssim=False, convention="pala")) >= {"pala_jaccard"}
    assert "jaccard" not in evaluate(points, list_pos, lam, ssim=False, convention="pala")


def test_missing_pulse_is_estimated_with_a_warning(sim):
    list_pos, rf = sim
    with pytest.warns(ULMWarning, match="estimated from the data"):
        estimated = localize(rf, PROBE, channels=32)
    true = localize(rf, PROBE, channels=32, pulse="analytic")
    a = evaluate(estimated, list_pos, LAMBDA, ssim=False)
    b = evaluate(true, list_pos, LAMBDA, ssim=False)
    # measured: 0.02-0.05 lambda/10 apart on these frames; the issue allows 0.2
    assert abs(a["error_lambda10"] - b["error_lambda10"]) < 0.2
    assert a["jaccard"] >= b["jaccard"] - 0.05


def test_pulse_estimate_matches_the_true_pulse(sim):
    from freehand3d.simulate.rf import reference_pulse
    from freehand3d.ulm.pulse import estimate_pulse

    _, rf = sim
    t, est = estimate_pulse(rf, PROBE)
    true_t, true = reference_pulse(PROBE)
    # measured max deviation 0.02 of the peak envelope on noiseless analytic data
    assert np.max(np.abs(est - np.interp(t, true_t, true))) < 0.06


def test_noise_only_frames_give_no_detections(sim):
    _, rf = sim
    noise = add_noise_snr(rf, PROBE, 30.0, seed=3, noise_only=True)
    assert len(localize(noise, PROBE, channels=32, pulse="analytic")) == 0
    from freehand3d.ulm.baseline import localize_das_wa

    assert len(localize_das_wa(noise[:1], PROBE, z_range=(4.0, 8.0))) == 0


def test_nan_samples_mask_channels_not_frames(sim):
    list_pos, rf = sim
    frame = rf[0].copy()
    clean = localize_frame(frame, PROBE, channels=32, pulse="analytic")
    frame[100:110, 5] = np.nan
    frame[:, 60] = np.inf
    with pytest.warns(ULMWarning, match="NaN/Inf"):
        masked = localize(frame[None], PROBE, channels=32, pulse="analytic")
    assert len(masked) >= len(clean) - 1 and len(masked) > 0


def test_save_load_rf_strict_roundtrip(tmp_path, sim):
    _, rf = sim
    save_rf(tmp_path / "rf.npz", rf, PROBE, tx_angle=0.01, t0=1e-7)
    back, probe, acq = load_rf(tmp_path / "rf.npz")
    np.testing.assert_array_equal(back, rf)
    assert probe == PROBE and acq["t0"] == pytest.approx(1e-7)  # measured: exact (max |diff| 0, AMD EPYC)
