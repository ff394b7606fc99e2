"""The noise-floor (CFAR) rule shared by DAS-WA and G-ULM's coherent seeding, against the noise's own
statistics: Rayleigh envelopes, channel-correlated noise (the G-ULM authors' smoothed noise) and
pixels that no channel reaches."""

import numpy as np
from scipy.ndimage import gaussian_filter

from freehand3d.ulm.baseline import beamform_das, das_noise_power, default_grid, demodulate, detection_level, localize_das_wa, noise_correlation
from freehand3d.ulm.probe import LinearProbe

PROBE = LinearProbe()


def _smoothed_noise(rng, shape, sigma=1.5):
    return gaussian_filter(rng.standard_normal(shape), sigma)


def test_dead_pixels_do_not_pull_the_noise_floor_to_zero():
    rng = np.random.default_rng(0)
    envelope = np.abs(rng.standard_normal((80, 120)) + 1j * rng.standard_normal((80, 120)))
    scale = np.ones_like(envelope)
    scale[:, :80] = 0.0  # two thirds of every row outside the aperture (16 sparse channels, shallow rows)
    envelope[:, :80] = 0.0
    level = detection_level(envelope, threshold_db=None, false_alarms=0.01, noise_scale=scale)
    assert np.all(np.isinf(level[:, :80]))
    # Rayleigh sigma 1 on the live pixels: k = sqrt(2 ln(3200 / 0.01)) = 5.04; the medians over
    # the live pixels of +-30 rows gave levels 4.87..5.27 on seeds 0-3 (window cut at the image's
    # ends: 31 rows x 40 pixels there)
    assert np.all((level[:, 80:] > 4.5) & (level[:, 80:] < 5.5))
    assert not np.any(envelope[:, 80:] >= level[:, 80:])


def test_noise_correlation_measures_the_smoothed_noise():
    rng = np.random.default_rng(1)
    iq = demodulate(_smoothed_noise(rng, (1500, 128)), PROBE, np.arange(128))
    rho, gain = noise_correlation(iq)
    lag0 = np.abs(rho[:, (rho.shape[1] - 1) // 2])
    # Gaussian smoothing of 1.5 channels: neighbour correlation exp(-dk^2 / 9) = 0.89, 0.64, 0.37;
    # measured 0.89, 0.64, 0.37 (+-0.01 over seeds 0-3)
    assert np.allclose(lag0[1:4], np.exp(-np.arange(1, 4) ** 2 / 9.0), atol=0.03)
    assert np.all(lag0[7:] == 0)
    # scipy's reflecting border makes the two outermost channels noisier (gain 1.29, 1.42 here);
    # inner channels' gains, each from the median of one channel's 1500 correlated samples,
    # spread 0.92..1.13 on this seed
    assert gain[0] > 1.15 and gain[-1] > 1.15 and np.all(np.abs(gain[10:-10] - 1) < 0.2)


def test_das_noise_power_matches_the_beamformed_noise():
    rng = np.random.default_rng(2)
    x, z = default_grid(PROBE, (1.0, 6.0))
    x, z = x[::2], z[::2]
    n_samples = 1000
    frames = [_smoothed_noise(rng, (n_samples, 128)) for _ in range(24)]
    chosen = np.arange(128)
    rho, gain = noise_correlation(demodulate(frames[0], PROBE, chosen))
    power = das_noise_power(PROBE, x, z, rho, gain, n_samples)
    unit = np.median(np.mean(np.abs(demodulate(frames[0], PROBE, chosen)) ** 2, axis=0))
    measured, counts = 0.0, None
    for frame in frames:
        image, counts = beamform_das(frame, PROBE, x, z, return_counts=True)
        measured = measured + np.abs(image) ** 2 / len(frames)
    measured /= unit
    model = measured / power
    plain = measured / counts
    # averaged over the shallow, deep-centre and aperture-end regions the model holds to 0.97-1.02
    # (40 frames, seeds 2 and 5; 0.96-1.07 with 12 frames), while noise power / channel count
    # is 1.90-2.30, 1.19x higher at the aperture's ends than in the centre (correlated noise sums
    # coherently there)
    regions = [(z < 2.0)[:, None] & (np.abs(x) < 5)[None], (z > 4.0)[:, None] & (np.abs(x) < 3)[None], (np.abs(x) > 5.5)[None, :] & (z > 2)[:, None]]
    ratios = [float(np.mean(model[r])) for r in regions]
    assert all(0.93 < r < 1.07 for r in ratios), ratios
    spread_plain = [float(np.mean(plain[r])) for r in regions]
    assert max(spread_plain) / min(spread_plain) > 1.1, spread_plain  # 1.18-1.19 measured


def test_das_wa_gives_no_detections_on_noise_only_frames_with_few_channels():
    # L11-5v-like: 16 of 128 channels are 2.4 mm apart, so at shallow depth most pixels of a row
    # lie outside every channel's f-number aperture; before the row median skipped those pixels
    # these 3 frames gave 57 detections (now 0)
    probe = LinearProbe(pitch=0.3, element_width=0.27, center_frequency=7.6e6, sampling_frequency=30.4e6, fractional_bandwidth=0.77)
    rng = np.random.default_rng(3)
    rf = np.stack([_smoothed_noise(rng, (700, 128)) for _ in range(3)])
    assert len(localize_das_wa(rf, probe, channels=16)) == 0


def test_noise_only_frames_give_no_detections_with_either_method():
    # the project's own generator: analytic frames set the level of the G-ULM authors' smoothed noise
    # (in-band SNR 30 dB), the noise alone goes through both methods at their default rule
    # (DEFAULT_FALSE_ALARMS noise maxima per image, shared by DAS-WA and G-ULM's coherent seeds)
    import warnings

    from freehand3d.simulate.rf import add_noise_snr, simulate_bubbles, simulate_rf
    from freehand3d.ulm.pipeline import localize

    list_pos = simulate_bubbles(2, seed=11, bubbles_per_frame=8, z_range=(3.0, 5.0))
    noise = add_noise_snr(simulate_rf(list_pos, PROBE), PROBE, 30.0, seed=12, noise_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no pulse in noise: the analytic one, with a warning
        for channels in (128, 16):
            assert len(localize(noise, PROBE, channels=channels, pulse="analytic")) == 0
            assert len(localize_das_wa(noise, PROBE, channels=channels)) == 0
    # ... and not because the rule is silent anyway: at 10 noise maxima per image the same rule finds
    # 3.0-5.5 per image on these frames (16 channels, noise seeds 12-19; the pixels are correlated,
    # so fewer maxima than the independent-pixel count the rule assumes)
    loose = localize_das_wa(noise, PROBE, channels=16, false_alarms=10.0, threshold_db=None)
    assert 1.5 <= len(loose) / len(noise) <= 20
