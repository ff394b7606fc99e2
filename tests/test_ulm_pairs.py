"""G-ULM's close-pair stage (freehand3d.ulm.pairs): a located bubble that hides a second one
0.5-1.5 wavelengths beside it is split into two; lone bubbles and noise are left alone."""

import numpy as np
import pytest

import freehand3d.ulm.pipeline as pipeline
from freehand3d.simulate.rf import add_noise_snr, reference_pulse, simulate_rf
from freehand3d.ulm.coherent import PulseModel
from freehand3d.ulm.echoes import bandpass, reference_fit
from freehand3d.ulm.metrics import pair_frame
from freehand3d.ulm.pairs import split_pairs
from freehand3d.ulm.pipeline import localize_frame
from freehand3d.ulm.probe import LinearProbe

PROBE = LinearProbe()
LAMBDA = PROBE.wavelength


def _found(truth, rf, split):
    old = pipeline.SPLIT_PAIRS
    pipeline.SPLIT_PAIRS = split
    try:
        tp = fp = 0
        for f in range(rf.shape[0]):
            points = localize_frame(rf[f], PROBE, channels=128, pulse="analytic")
            det, _ = pair_frame(points, truth[:, :2, f], LAMBDA / 4)
            tp += len(det)
            fp += len(points) - len(det)
        return tp, fp
    finally:
        pipeline.SPLIT_PAIRS = old


@pytest.fixture(scope="module")
def close_pairs():
    # a bubble and one 0.6x as strong 1.0-1.5 lambda beside it, 0.1-0.4 lambda deeper, plus a lone one
    rng = np.random.default_rng(7)
    frames = 4
    truth = np.zeros((3, 3, frames))
    for f in range(frames):
        d, dz = rng.uniform(1.0, 1.5), rng.uniform(0.1, 0.4)
        x0 = rng.uniform(-1.0, 1.0)
        truth[:, :, f] = [[x0, 6.0, 1.0], [x0 + d * LAMBDA, 6.0 + dz * LAMBDA, 0.6], [x0 - 2.0, 7.5, 0.8]]
    rf = add_noise_snr(simulate_rf(truth, PROBE), PROBE, 30.0, seed=2)
    return truth, rf


def test_close_pairs_are_split(close_pairs):
    truth, rf = close_pairs
    tp_off, fp_off = _found(truth, rf, False)
    tp_on, fp_on = _found(truth, rf, True)
    # measured on these 4 frames (analytic simulator, in-band SNR 30 dB): without the stage TP / FP
    # = 9 / 1, with it 10 / 1 (a weaker bubble 1.2 lambda beside a located one found; one pair 1.1
    # lambda apart is reported as one bubble 0.2 lambda from the stronger either way)
    assert tp_on >= tp_off + 1 and fp_on <= fp_off, (tp_on, fp_on, tp_off, fp_off)


def test_lone_bubbles_and_noise_are_not_split():
    model = PulseModel(PROBE, reference_pulse(PROBE), reference_fit(PROBE, reference_pulse(PROBE)).half_window)
    chosen = np.arange(PROBE.n_elements)
    truth = np.array([[0.3, 6.0, 1.0], [-2.0, 7.5, 0.5]])[:, :, None]
    rf = add_noise_snr(simulate_rf(truth, PROBE), PROBE, 20.0, seed=9)[0]
    centres = truth[:, :2, 0]
    out = split_pairs(bandpass(rf, PROBE), PROBE, chosen, centres, model)
    assert np.array_equal(out, centres)
    noise = add_noise_snr(simulate_rf(truth, PROBE), PROBE, 20.0, seed=9, noise_only=True)[0]
    # pure noise at made-up positions: nothing to split
    fake = np.array([[0.3, 6.0], [-2.0, 7.5], [1.5, 5.0], [-1.0, 8.0]])
    out = split_pairs(bandpass(noise, PROBE), PROBE, chosen, fake, model)
    assert np.array_equal(out, fake)
