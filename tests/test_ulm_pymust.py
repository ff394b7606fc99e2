"""G-ULM on data from an independent simulator (PyMUST SIMUS) with realistic in-band noise (slow)."""

import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def l11_frames():
    pytest.importorskip("pymust")
    from freehand3d.simulate.rf import reference_pulse, simulate_bubbles, simulate_rf
    from freehand3d.ulm.probe import LinearProbe

    probe = LinearProbe(pitch=0.3, element_width=0.27, center_frequency=7.6e6, sampling_frequency=30.4e6, fractional_bandwidth=0.77)
    list_pos = simulate_bubbles(3, seed=0, bubbles_per_frame=9, x_range=(-10.0, 10.0), z_range=(6.0, 20.0), n_vessels=8)
    return probe, list_pos, simulate_rf(list_pos, probe, backend="pymust"), reference_pulse(probe, "pymust")


def test_gulm_at_30_db_in_band_snr_and_no_pulse(l11_frames):
    from freehand3d.simulate.rf import add_noise_snr
    from freehand3d.ulm.metrics import evaluate
    from freehand3d.ulm.pipeline import localize

    probe, list_pos, rf, pulse = l11_frames
    noisy = add_noise_snr(rf, probe, 30.0, seed=1)
    with_pulse = evaluate(localize(noisy, probe, pulse=pulse), list_pos, probe.wavelength, ssim=False)
    # measured on these 3 frames: Jaccard 1.0 (10-frame benchmark: 100 %), error ~0.17 lambda/10
    assert with_pulse["jaccard"] >= 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimated = evaluate(localize(noisy, probe), list_pos, probe.wavelength, ssim=False)
    # acceptance: without a pulse within 0.2 lambda/10 of the true-pulse error. Measured (AMD EPYC):
    # 0.090 here (0.212 with the pulse, 0.301 without); noise seeds 2 / 3 / 4: 0.019 / 0.066 / 0.102
    assert abs(estimated["error_lambda10"] - with_pulse["error_lambda10"]) < 0.2
    noise = add_noise_snr(rf, probe, 30.0, seed=2, noise_only=True)
    assert len(localize(noise, probe, pulse=pulse)) == 0


def test_gulm_ahead_of_das_at_20_db(l11_frames):
    from freehand3d.simulate.rf import add_noise_snr
    from freehand3d.ulm.baseline import localize_das_wa
    from freehand3d.ulm.metrics import evaluate
    from freehand3d.ulm.pipeline import localize

    probe, list_pos, rf, pulse = l11_frames
    noisy = add_noise_snr(rf, probe, 20.0, seed=1)
    gulm = evaluate(localize(noisy, probe, pulse=pulse), list_pos, probe.wavelength, ssim=False)
    z = list_pos[:, 1][np.isfinite(list_pos[:, 1])]
    das = evaluate(localize_das_wa(noisy, probe, z_range=(z.min() - 1, z.max() + 1)), list_pos, probe.wavelength, ssim=False)
    # measured on these 3 frames: G-ULM 95.7 % (error 0.20 lambda/10), DAS-WA 91.7 % (0.89);
    # without the coherent stage (echo pairs only) G-ULM had 8.7 %
    assert gulm["jaccard"] >= das["jaccard"] and gulm["jaccard"] >= 0.93
    assert gulm["error_lambda10"] < das["error_lambda10"]


def test_noise_only_frames_give_no_detections_with_either_method(l11_frames):
    # acceptance of issue 16: noise-only frames give 0 detections with both methods. The noise is
    # at the level the PyMUST frames set (in-band SNR 30 dB); 3 noise seeds x 3 frames, 128 and 16
    # channels, default rules (DEFAULT_FALSE_ALARMS = 1e-4 noise maxima per image for DAS-WA and
    # G-ULM's coherent seeds; with 0.01, 200 noise-only frames per probe and angle gave a few, see
    # docs/ulm.md)
    from freehand3d.simulate.rf import add_noise_snr
    from freehand3d.ulm.baseline import localize_das_wa
    from freehand3d.ulm.pipeline import localize

    probe, _, rf, pulse = l11_frames
    for seed in (21, 22, 23):
        noise = add_noise_snr(rf, probe, 30.0, seed=seed, noise_only=True)
        for channels in (128, 16):
            assert len(localize(noise, probe, channels=channels, pulse=pulse)) == 0
            assert len(localize_das_wa(noise, probe, channels=channels)) == 0
