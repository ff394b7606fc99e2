"""RF channel data of microbubbles flowing in synthetic vessels, for ULM (plane-wave, linear array).

Two simulators share one interface (:func:`simulate_rf`):

* ``backend="analytic"`` (default, no extra dependency): every bubble is a point scatterer; each
  channel receives the probe's two-way pulse delayed by the exact transmit + receive time of flight
  (:func:`freehand3d.ulm.probe.echo_times`), scaled by the bubble amplitude, 1/sqrt(receive distance)
  spreading and the element directivity. Deterministic and fast (used by the tests).
* ``backend="pymust"`` (optional extra ``ulm-sim``): PyMUST's ``simus`` with a parameter set built
  from the same :class:`~freehand3d.ulm.probe.LinearProbe`.

Ground truth is stored in PALA's ``ListPos`` layout: an array (n_bubbles, 3, n_frames) holding
(x, z, amplitude) of every bubble in every frame, NaN where a bubble is absent. Positions in mm.

Noise follows PALA's model (Heiles et al. 2022; eq. 9 of Hahne & Sznitman 2023): a clutter level
``clutter_db`` sets, relative to the maximum absolute RF value, a constant clutter term and a white
Gaussian term ``amplitude_db`` higher (power -2 dBW into 0.2 ohm), both smoothed by a 2-D Gaussian of
1.5 pixels, applied (as in the G-ULM paper) to the channel data, samples x channels. That low-pass
keeps little of the noise inside the probe band; ``add_pala_noise(..., smoothing="receive-band")``
is a harder variant that band-passes the noise instead. :func:`add_noise_snr` sets the noise by its
in-band SNR instead of a clutter level (the G-ULM authors' noise shape: white Gaussian noise smoothed
by a 2-D Gaussian of 1.5 samples x channels, so neighbouring channels' noise is correlated).

The RF and ground-truth files are read and written by :mod:`freehand3d.ulm.files` (re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from freehand3d.errors import InputError
from freehand3d.ulm.files import load_ground_truth, load_rf, save_ground_truth, save_rf  # noqa: F401  (moved; kept importable)
from freehand3d.ulm.probe import LinearProbe, echo_times

__all__ = [
    "simulate_bubbles",
    "simulate_rf",
    "add_pala_noise",
    "add_noise_snr",
    "reference_pulse",
    "simulate_dataset",
    "save_rf",
    "load_rf",
    "save_ground_truth",
    "load_ground_truth",
]


def _vessel_centrelines(rng: np.random.Generator, n_vessels: int, x_range, z_range, n_points: int = 400):
    """Smooth random curves crossing the field of view laterally, as (n_vessels, n_points, 2) in mm."""
    x = np.linspace(x_range[0] - 0.5, x_range[1] + 0.5, n_points)
    curves = []
    for _ in range(n_vessels):
        depth = rng.uniform(z_range[0] + 0.8, z_range[1] - 0.8)
        amp = rng.uniform(0.2, 0.8)
        period = rng.uniform(4.0, 12.0)
        phase = rng.uniform(0, 2 * np.pi)
        tilt = rng.uniform(-0.25, 0.25)
        z = depth + amp * np.sin(2 * np.pi * x / period + phase) + tilt * x
        z = np.clip(z, z_range[0], z_range[1])
        xs = x if rng.random() < 0.5 else x[::-1]  # flow direction
        zs = z if xs is x else z[::-1]
        curves.append(np.stack([xs, zs], axis=1))
    return np.asarray(curves)


def simulate_bubbles(
    n_frames: int,
    seed: int = 0,
    *,
    bubbles_per_frame: float = 12.0,
    n_vessels: int = 6,
    x_range: tuple[float, float] = (-5.0, 5.0),
    z_range: tuple[float, float] = (4.0, 10.0),
    frame_rate: float = 100.0,
    speed_range: tuple[float, float] = (5.0, 30.0),
    vessel_radius: float = 0.15,
) -> np.ndarray:
    """Bubbles flowing along synthetic vessels, as PALA's ListPos (n_bubbles, 3, n_frames).

    Each bubble follows one vessel centreline (offset inside the vessel radius) at a constant speed
    (mm/s) drawn from ``speed_range``; it is present (not NaN) while it is inside the field of view.
    Amplitudes are log-uniform over 10 dB. Deterministic for a given ``seed``.

    Returns
    -------
    numpy.ndarray
        (n_bubbles, 3, n_frames) float64: x (mm), z (mm), amplitude; NaN where absent.
    """
    if n_frames < 1:
        raise ValueError("n_frames must be at least 1")
    rng = np.random.default_rng(seed)
    curves = _vessel_centrelines(rng, n_vessels, x_range, z_range)
    seg = np.linalg.norm(np.diff(curves, axis=1), axis=2)
    arclen = np.concatenate([np.zeros((n_vessels, 1)), np.cumsum(seg, axis=1)], axis=1)
    # Enough bubbles that, on average, bubbles_per_frame are in view: a bubble is in view for
    # length / speed seconds; births spread over a window that keeps the density stationary.
    mean_len = float(np.mean(arclen[:, -1]))
    mean_speed = float(np.mean(speed_range))
    dwell_frames = mean_len / mean_speed * frame_rate
    window = n_frames + dwell_frames
    n_bubbles = max(1, int(round(bubbles_per_frame * window / dwell_frames)))
    vessel = rng.integers(0, n_vessels, n_bubbles)
    speed = rng.uniform(*speed_range, n_bubbles)
    birth = rng.uniform(-dwell_frames, n_frames, n_bubbles) / frame_rate
    offset = rng.uniform(-vessel_radius, vessel_radius, n_bubbles)
    amplitude = 10 ** rng.uniform(-0.5, 0.0, n_bubbles)
    t = np.arange(n_frames) / frame_rate
    list_pos = np.full((n_bubbles, 3, n_frames), np.nan)
    for b in range(n_bubbles):
        s = (t - birth[b]) * speed[b]
        length = arclen[vessel[b], -1]
        inside = (s >= 0) & (s <= length)
        if not inside.any():
            continue
        cx = np.interp(s[inside], arclen[vessel[b]], curves[vessel[b], :, 0])
        cz = np.interp(s[inside], arclen[vessel[b]], curves[vessel[b], :, 1])
        # offset perpendicular to the local direction, so the bubble stays inside the vessel
        ds = 1e-3
        dx = np.interp(s[inside] + ds, arclen[vessel[b]], curves[vessel[b], :, 0]) - cx
        dz = np.interp(s[inside] + ds, arclen[vessel[b]], curves[vessel[b], :, 1]) - cz
        norm = np.hypot(dx, dz) + 1e-12
        x = cx - offset[b] * dz / norm
        z = cz + offset[b] * dx / norm
        in_view = (x >= x_range[0]) & (x <= x_range[1]) & (z >= z_range[0]) & (z <= z_range[1])
        frames = np.flatnonzero(inside)[in_view]
        list_pos[b, 0, frames] = x[in_view]
        list_pos[b, 1, frames] = z[in_view]
        list_pos[b, 2, frames] = amplitude[b]
    present = np.isfinite(list_pos[:, 0, :]).any(axis=1)
    return list_pos[present]


def default_n_samples(probe: LinearProbe, max_depth: float, t0: float = 0.0) -> int:
    """Samples needed to record echoes from ``max_depth`` (mm) at every element, plus a pulse margin."""
    far = np.array([[probe.element_x[0], max_depth], [probe.element_x[-1], max_depth]])
    t_max = float(np.max(echo_times(far, probe, 0.0))) + 1.5e-6
    return int(np.ceil((t_max - t0) * probe.sampling_frequency))


def _directivity(probe: LinearProbe, points: np.ndarray) -> np.ndarray:
    """Soft-baffle element directivity sinc(pi w sin(theta)/lambda) cos(theta) for (..., 2) points."""
    dx = points[..., 0:1] - probe.element_x
    r = np.sqrt(dx**2 + points[..., 1:2] ** 2)
    sin_t = dx / r
    cos_t = points[..., 1:2] / r
    return np.sinc(probe.element_width * sin_t / probe.wavelength) * cos_t


def _simulate_frame_analytic(points, amps, probe, tx_angle, t0, n_samples):
    t = t0 + np.arange(n_samples) / probe.sampling_frequency
    rf = np.zeros((n_samples, probe.n_elements))
    if len(points) == 0:
        return rf
    tau = echo_times(points, probe, tx_angle)  # (B, E)
    r = np.sqrt((points[:, 0:1] - probe.element_x) ** 2 + points[:, 1:2] ** 2)
    gain = amps[:, None] * _directivity(probe, points) / np.sqrt(r)
    fine_t, _ = _two_way_pulse_support(probe)
    half = int(np.ceil(max(abs(fine_t[0]), abs(fine_t[-1])) * probe.sampling_frequency)) + 1
    for b in range(len(points)):
        centre = np.round((tau[b] - t0) * probe.sampling_frequency).astype(int)  # (E,)
        idx = centre[None, :] + np.arange(-half, half + 1)[:, None]  # (L, E)
        valid = (idx >= 0) & (idx < n_samples)
        idx_c = np.clip(idx, 0, n_samples - 1)
        pulse = probe.two_way_pulse(t[idx_c] - tau[b][None, :]) * gain[b][None, :]
        np.add.at(rf, (idx_c[valid], np.broadcast_to(np.arange(probe.n_elements), idx.shape)[valid]), pulse[valid])
    return rf


def _two_way_pulse_support(probe: LinearProbe):
    from freehand3d.ulm.probe import _two_way_pulse_table

    return _two_way_pulse_table(probe.center_frequency, probe.fractional_bandwidth)


def _pymust_param(probe: LinearProbe):
    import pymust

    param = pymust.utils.Param()
    param.fc = probe.center_frequency
    param.bandwidth = probe.fractional_bandwidth * 100
    param.width = probe.element_width * 1e-3
    param.kerf = (probe.pitch - probe.element_width) * 1e-3
    param.pitch = probe.pitch * 1e-3
    param.Nelements = probe.n_elements
    param.c = probe.speed_of_sound * 1e-3
    param.fs = probe.sampling_frequency
    param.attenuation = 0
    return param


def _simulate_frame_pymust(points, amps, probe, tx_angle, t0, n_samples):
    import pymust

    param = _pymust_param(probe)
    delays = pymust.txdelay(param, tx_angle)
    if len(points) == 0:
        return np.zeros((n_samples, probe.n_elements))
    rf, _ = pymust.simus(points[:, 0] * 1e-3, points[:, 1] * 1e-3, amps, delays, param)
    rf = np.asarray(rf, dtype=float)
    out = np.zeros((n_samples, probe.n_elements))
    # PyMUST starts its time axis at 0; shift to t0
    start = int(round(t0 * probe.sampling_frequency))
    chunk = rf[start : start + n_samples]
    out[: len(chunk)] = chunk
    return out


def reference_pulse(probe: LinearProbe | None = None, backend: str = "analytic") -> tuple[np.ndarray, np.ndarray]:
    """Two-way pulse (t seconds, values) of a simulator, envelope maximum at t = 0, peak envelope 1.

    For ``"pymust"`` the pulse is measured: ``simus`` is run for one scatterer on the array axis at
    16 times the sampling rate and the centre channel's echo is cut out around its envelope maximum.
    """
    probe = probe or LinearProbe()
    if backend == "analytic":
        return _two_way_pulse_support(probe)
    if backend != "pymust":
        raise ValueError(f"unknown backend {backend!r}: use 'analytic' or 'pymust'")
    import pymust
    from freehand3d.ulm.echoes import analytic_signal

    upsample = 16
    param = _pymust_param(probe)
    param.fs = probe.sampling_frequency * upsample
    depth = 8.0
    rf, _ = pymust.simus(np.array([probe.element_x[probe.n_elements // 2] * 1e-3]), np.array([depth * 1e-3]), np.array([1.0]), pymust.txdelay(param, 0.0), param)
    trace = np.asarray(rf, float)[:, probe.n_elements // 2]
    envelope = np.abs(analytic_signal(trace))
    peak = int(np.argmax(envelope))
    half = int(2e-6 * param.fs)
    lo, hi = max(0, peak - half), min(len(trace), peak + half)
    t = (np.arange(lo, hi) - peak) / param.fs
    return t, trace[lo:hi] / envelope[peak]


def add_pala_noise(
    rf: np.ndarray,
    probe: LinearProbe,
    clutter_db: float,
    seed: int = 0,
    *,
    amplitude_db: float = 10.0,
    power_dbw: float = -2.0,
    impedance: float = 0.2,
    sigma: float = 1.5,
    smoothing: str = "gaussian",
) -> np.ndarray:
    """Add PALA-model clutter + white noise at ``clutter_db`` to RF data (..., n_samples, n_elements).

    noise = B( max|rf| 10^(clutter/20) + max|rf| 10^((amplitude+clutter)/20) w ),
    w ~ N(0, impedance 10^(power/10)), the maximum taken per frame. ``smoothing="gaussian"`` makes B
    PALA's 2-D Gaussian of ``sigma`` pixels (here samples x channels), as the G-ULM paper applies it
    to channel data; ``"receive-band"`` makes B the probe's receive band-pass (variance kept), which
    leaves far more noise inside the probe band (a harder setting). Returns a new float32 array.
    """
    if smoothing not in ("gaussian", "receive-band"):
        raise ValueError(f"unknown smoothing {smoothing!r}: use 'gaussian' or 'receive-band'")
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    rf = np.asarray(rf, dtype=np.float64)
    frames = rf.reshape((-1,) + rf.shape[-2:])
    out = np.empty_like(frames)
    n_samples = frames.shape[1]
    f = np.fft.rfftfreq(n_samples, 1 / probe.sampling_frequency)
    sigma_f = probe.fractional_bandwidth * probe.center_frequency / (2 * np.sqrt(2 * np.log(2)))
    band = np.exp(-0.5 * ((f - probe.center_frequency) / sigma_f) ** 2)
    band = band / np.sqrt(np.sum(band**2) / len(f))
    sigma_w = np.sqrt(impedance * 10 ** (power_dbw / 10))
    for i, frame in enumerate(frames):
        peak = np.max(np.abs(frame))
        white = rng.normal(0.0, sigma_w, frame.shape)
        noise = peak * 10 ** (clutter_db / 20) + peak * 10 ** ((amplitude_db + clutter_db) / 20) * white
        if smoothing == "gaussian":
            noise = gaussian_filter(noise, sigma)
        else:
            noise = np.fft.irfft(np.fft.rfft(noise, axis=0) * band[:, None], n_samples, axis=0)
        out[i] = frame + noise
    return out.reshape(rf.shape).astype(np.float32)


def in_band(rf: np.ndarray, probe: LinearProbe) -> np.ndarray:
    """RF (..., n_samples, n_elements) band-passed as the localizers see it (:func:`freehand3d.ulm.echoes.bandpass`)."""
    from freehand3d.ulm.echoes import bandpass

    return bandpass(rf, probe, axis=-2)


def add_noise_snr(
    rf: np.ndarray,
    probe: LinearProbe,
    snr_db: float | None,
    seed: int = 0,
    *,
    sigma: float = 1.5,
    noise_only: bool = False,
) -> np.ndarray:
    """Add noise of a given in-band SNR to RF data (..., n_samples, n_elements); returns float32.

    Noise shape (the G-ULM authors' model): white Gaussian noise smoothed by a 2-D Gaussian of
    ``sigma`` samples x channels. Level, per frame: in-band SNR = 20 log10(max |B rf| / std(B noise))
    with B the localizers' receive band-pass (:func:`in_band`), i.e. the strongest echo sample of the
    frame against the in-band noise RMS. ``snr_db=None`` returns the data unchanged; ``noise_only``
    returns the noise alone at the level the frame would have set (for false-positive checks).
    """
    from scipy.ndimage import gaussian_filter

    rf = np.asarray(rf, dtype=np.float64)
    if snr_db is None:
        return rf.astype(np.float32)
    rng = np.random.default_rng(seed)
    frames = rf.reshape((-1,) + rf.shape[-2:])
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        noise = gaussian_filter(rng.standard_normal(frame.shape), sigma)
        peak = np.max(np.abs(in_band(frame, probe)))
        noise *= peak * 10 ** (-snr_db / 20) / np.std(in_band(noise, probe))
        out[i] = noise if noise_only else frame + noise
    return out.reshape(rf.shape).astype(np.float32)


def simulate_rf(
    list_pos: np.ndarray,
    probe: LinearProbe | None = None,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    n_samples: int | None = None,
    clutter_db: float | None = None,
    noise_smoothing: str = "gaussian",
    seed: int = 0,
    backend: str = "analytic",
    progress: bool = False,
) -> np.ndarray:
    """RF channel data for every frame of a ListPos ground truth.

    Parameters
    ----------
    list_pos : (n_bubbles, 3, n_frames) array
        PALA ListPos (x mm, z mm, amplitude; NaN when absent).
    probe : LinearProbe, optional
        Array and pulse; L22-14v-like defaults.
    tx_angle : float
        Plane-wave steering angle in radians.
    t0 : float
        Time (s) of the first recorded sample.
    n_samples : int, optional
        Samples per channel; by default enough for the deepest bubble.
    clutter_db : float, optional
        PALA noise clutter level (e.g. -30, -20, -10); None for noiseless data.
    noise_smoothing : {"gaussian", "receive-band"}
        See :func:`add_pala_noise`.
    seed : int
        Noise seed.
    backend : {"analytic", "pymust"}
        Simulator; see the module docstring.

    Returns
    -------
    numpy.ndarray
        (n_frames, n_samples, n_elements) float32 RF.
    """
    probe = probe or LinearProbe()
    list_pos = np.asarray(list_pos, dtype=float)
    if list_pos.ndim != 3 or list_pos.shape[1] != 3:
        raise ValueError("list_pos must have shape (n_bubbles, 3, n_frames)")
    if backend not in ("analytic", "pymust"):
        raise ValueError(f"unknown backend {backend!r}: use 'analytic' or 'pymust'")
    if backend == "pymust":
        try:
            import pymust  # noqa: F401
        except ImportError as exc:  # optional extra
            raise InputError("the 'pymust' backend needs PyMUST: pip install 'freehand3d[ulm-sim]'") from exc
    if n_samples is None:
        max_depth = np.nanmax(list_pos[:, 1, :]) if np.isfinite(list_pos[:, 1, :]).any() else 10.0
        n_samples = default_n_samples(probe, float(max_depth), t0)
    n_frames = list_pos.shape[2]
    simulate_frame = _simulate_frame_analytic if backend == "analytic" else _simulate_frame_pymust
    rf = np.zeros((n_frames, n_samples, probe.n_elements), dtype=np.float32)
    frames = range(n_frames)
    if progress:
        from rich.progress import track

        frames = track(frames, description="simulating RF")
    for f in frames:
        present = np.isfinite(list_pos[:, 0, f])
        points = list_pos[present, :2, f]
        amps = list_pos[present, 2, f]
        rf[f] = simulate_frame(points, amps, probe, tx_angle, t0, n_samples)
    if clutter_db is not None:
        rf = add_pala_noise(rf, probe, clutter_db, seed=seed + 7919, smoothing=noise_smoothing)
    return rf


def simulate_dataset(
    out_dir: str | os.PathLike,
    n_frames: int,
    seed: int = 0,
    *,
    probe: LinearProbe | None = None,
    tx_angle: float = 0.0,
    clutter_db: float | None = None,
    backend: str = "analytic",
    bubbles_per_frame: float = 12.0,
    snr_db: float | None = None,
    store_pulse: bool = True,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Simulate bubbles + RF and write ``out_dir/rf.npz`` and ``out_dir/gt.npz``; return both paths.

    ``snr_db`` adds noise of that in-band SNR (:func:`add_noise_snr`, the G-ULM authors' noise
    shape) on top of any ``clutter_db``; ``store_pulse=False`` leaves the pulse out of the file (the
    localizer then estimates it from the data).
    """
    probe = probe or LinearProbe()
    out_dir = Path(out_dir)
    x_half = 0.4 * probe.pitch * (probe.n_elements - 1)  # the field of view scales with the aperture
    list_pos = simulate_bubbles(n_frames, seed, bubbles_per_frame=bubbles_per_frame, x_range=(-min(5.0, x_half), min(5.0, x_half)))
    rf = simulate_rf(list_pos, probe, tx_angle=tx_angle, clutter_db=clutter_db, seed=seed, backend=backend, progress=progress)
    if snr_db is not None:
        rf = add_noise_snr(rf, probe, snr_db, seed=seed + 104729)
    rf_path, gt_path = out_dir / "rf.npz", out_dir / "gt.npz"
    extra = {}
    if store_pulse:
        extra["pulse_t"], extra["pulse"] = reference_pulse(probe, backend)
    save_rf(rf_path, rf, probe, tx_angle=tx_angle, t0=0.0, clutter_db=np.nan if clutter_db is None else clutter_db, snr_db=np.nan if snr_db is None else snr_db, seed=seed, **extra)
    save_ground_truth(gt_path, list_pos, probe)
    return rf_path, gt_path
