"""Beamforming baseline for ULM: delay-and-sum (DAS) + PALA-style weighted-average localization.

DAS: the band-passed channel data are demodulated to IQ (smooth in time, so linear interpolation is
accurate at 4 samples per period), delayed to every pixel with the plane-wave time of flight
(:func:`freehand3d.ulm.probe.echo_times`), re-modulated and summed over the channels inside an
f-number aperture. The envelope image is then searched for regional maxima above a threshold, and each
maximum is refined by the intensity-weighted centroid of its (2 r + 1)^2 neighbourhood ("WA" in PALA).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import maximum_filter
from freehand3d.ulm.echoes import analytic_signal, bandpass
from freehand3d.ulm.probe import LinearProbe, echo_times

__all__ = ["detection_level", "beamform_das", "weighted_average_localize", "localize_das_wa", "default_grid"]


def default_grid(probe: LinearProbe, z_range: tuple[float, float], pixel: float | None = None):
    """Pixel centres (x (nx,), z (nz,)) covering the aperture laterally, ``pixel`` default lambda / 2."""
    pixel = probe.wavelength / 2 if pixel is None else pixel
    x = np.arange(probe.element_x[0], probe.element_x[-1] + pixel / 2, pixel)
    z = np.arange(z_range[0], z_range[1] + pixel / 2, pixel)
    return x, z


def beamform_das(
    rf: np.ndarray,
    probe: LinearProbe,
    x: np.ndarray,
    z: np.ndarray,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    f_number: float = 1.0,
    channels: np.ndarray | None = None,
    return_counts: bool = False,
) -> np.ndarray:
    """Delay-and-sum one plane-wave RF frame onto a grid; returns the complex image (nz, nx)
    (and, with ``return_counts``, the number of channels summed at each pixel).

    Parameters
    ----------
    rf : array (n_samples, n_elements)
        One frame.
    probe : LinearProbe
    x, z : arrays
        Pixel centres (mm).
    tx_angle, t0 : float
        Plane-wave angle (radians) and time of sample 0 (s).
    f_number : float
        Receive aperture: element k contributes to a pixel at depth z if |x - x_k| <= z / (2 F).
    channels : int array, optional
        Elements to use (default all).
    """
    rf = bandpass(np.asarray(rf, float), probe)
    fs, fc = probe.sampling_frequency, probe.center_frequency
    n_samples = rf.shape[0]
    chosen = np.arange(probe.n_elements) if channels is None else np.asarray(channels, int)
    t = t0 + np.arange(n_samples) / fs
    iq = analytic_signal(rf[:, chosen], axis=0) * np.exp(-2j * np.pi * fc * t)[:, None]
    elem_x = probe.element_x[chosen]
    image = np.zeros((len(z), len(x)), complex)
    counts = np.zeros((len(z), len(x)))
    xx = np.broadcast_to(x[None, :], (1, len(x)))
    rows_per_chunk = max(1, 200_000 // max(1, len(x) * len(chosen)) * 8)
    for start in range(0, len(z), rows_per_chunk):
        zz = z[start : start + rows_per_chunk]
        pts = np.stack(np.broadcast_arrays(xx, zz[:, None]), axis=-1)  # (nzc, nx, 2)
        delay = echo_times(pts, probe, tx_angle)[..., chosen]  # (nzc, nx, M)
        pos = (delay - t0) * fs
        i0 = np.floor(pos).astype(int)
        frac = pos - i0
        inside = (i0 >= 0) & (i0 < n_samples - 1)
        i0 = np.clip(i0, 0, n_samples - 2)
        cols = np.arange(len(chosen))
        sample = iq[i0, cols] * (1 - frac) + iq[i0 + 1, cols] * frac
        sample *= np.exp(2j * np.pi * fc * delay)  # back onto the carrier at the pixel's delay
        aperture = np.abs(pts[..., 0:1] - elem_x) <= pts[..., 1:2] / (2 * f_number)
        used = inside & aperture
        image[start : start + len(zz)] = np.sum(np.where(used, sample, 0), axis=-1)
        counts[start : start + len(zz)] = used.sum(axis=-1)
    return (image, counts) if return_counts else image


def detection_level(
    envelope: np.ndarray,
    *,
    threshold_db: float | None = -20.0,
    false_alarms: float | None = 0.01,
    noise_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Detection threshold of an envelope image (nz, nx), broadcastable to it: the larger of
    ``threshold_db`` relative to the image maximum and the noise-floor (CFAR) level (see
    :func:`weighted_average_localize`); shared by DAS-WA and G-ULM's coherent seeding."""
    envelope = np.asarray(envelope, float)
    peak = envelope.max() if envelope.size else 0.0
    level = np.zeros(envelope.shape[0])
    if threshold_db is not None:
        level[:] = peak * 10 ** (threshold_db / 20)
    if false_alarms is None:
        return level[:, None]
    from scipy.ndimage import median_filter

    from freehand3d.ulm.pulse import noise_floor

    scale = np.ones_like(envelope) if noise_scale is None else np.asarray(noise_scale, float)
    safe = np.where(scale > 0, scale, 1.0)
    sigma = median_filter(noise_floor(envelope / safe, axis=1), size=21, mode="nearest")
    k = np.sqrt(2 * np.log(max(envelope.size, 2) / false_alarms))
    return np.maximum(level[:, None], k * sigma[:, None] * scale)


def weighted_average_localize(
    envelope: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
    *,
    threshold_db: float | None = -26.0,
    radius: int = 2,
    max_bubbles: int | None = None,
    false_alarms: float | None = 0.01,
    noise_scale: np.ndarray | None = None,
) -> np.ndarray:
    """Regional maxima of an envelope image refined by intensity-weighted centroids.

    Parameters
    ----------
    envelope : array (nz, nx)
        Non-negative image on the grid (x, z).
    threshold_db : float or None
        Maxima below this level relative to the image maximum are ignored (None: off).
    false_alarms : float or None
        Noise-floor (CFAR-like) rule, the same as G-ULM's echo detection: each depth row's noise
        sigma (Rayleigh, median / sqrt(ln 4), then a running median over 21 rows so that one
        bubble's side lobes do not set its own row's floor) times k = sqrt(2 ln(n_pixels /
        false_alarms)); pure noise yields about ``false_alarms`` maxima per image. None: off.
    noise_scale : array (nz, nx), optional
        Relative noise amplitude per pixel (for DAS: sqrt of the channels summed there, which
        changes along a row where the f-number aperture is cut by the array's ends); the row's noise
        sigma is measured on envelope / noise_scale and the threshold scaled back per pixel.
    radius : int
        Half-width (pixels) of the centroid window.
    max_bubbles : int, optional
        Keep only the brightest maxima.

    Returns
    -------
    numpy.ndarray (K, 2)
        (x, z) in mm.
    """
    envelope = np.asarray(envelope, float)
    peak = envelope.max() if envelope.size else 0.0
    if peak <= 0:
        return np.zeros((0, 2))
    level = detection_level(envelope, threshold_db=threshold_db, false_alarms=false_alarms, noise_scale=noise_scale)
    is_max = (envelope == maximum_filter(envelope, size=2 * radius + 1, mode="constant")) & (envelope >= level) & (envelope > 0)
    # maxima on the border cannot be refined symmetrically
    is_max[:radius], is_max[-radius:], is_max[:, :radius], is_max[:, -radius:] = False, False, False, False
    zi, xi = np.nonzero(is_max)
    order = np.argsort(-envelope[zi, xi])
    if max_bubbles is not None:
        order = order[:max_bubbles]
    zi, xi = zi[order], xi[order]
    offsets = np.arange(-radius, radius + 1)
    oz, ox = np.meshgrid(offsets, offsets, indexing="ij")
    patch = envelope[zi[:, None, None] + oz, xi[:, None, None] + ox]  # (K, w, w)
    weight = patch.sum(axis=(1, 2))
    dz, dx = z[1] - z[0], x[1] - x[0]
    cz = z[zi] + (patch * oz).sum(axis=(1, 2)) / weight * dz
    cx = x[xi] + (patch * ox).sum(axis=(1, 2)) / weight * dx
    return np.column_stack([cx, cz])


def localize_das_wa(
    rf: np.ndarray,
    probe: LinearProbe | None = None,
    *,
    tx_angle: float = 0.0,
    t0: float = 0.0,
    channels: int | np.ndarray = 128,
    z_range: tuple[float, float] | None = None,
    pixel: float | None = None,
    threshold_db: float | None = -20.0,
    false_alarms: float | None = 0.01,
    radius: int = 2,
    f_number: float = 1.0,
    progress: bool = False,
) -> np.ndarray:
    """DAS + weighted-average localization; same input/output conventions as
    :func:`freehand3d.ulm.pipeline.localize` ((K, 2) for one frame, (K, 3) (frame, x, z) for many).

    ``z_range`` (mm) defaults to 1 mm .. the deepest depth whose echoes lie wholly inside the record
    (16 carrier periods before its end, less the steering's extra path across the aperture).
    ``threshold_db`` and ``false_alarms``: see :func:`weighted_average_localize`; the default -20 dB
    sits above the side lobes of a single plane-wave DAS image (f-number 1): with -26 dB, noiseless
    PyMUST frames gave 10 false positives per 40 bubbles (Jaccard 80 %), with -20 dB none. Channels with
    NaN/Inf samples are left out of that frame.
    """
    from freehand3d.ulm.pipeline import select_channels

    if probe is None:
        from freehand3d.ulm.pipeline import _warn

        _warn("no probe given: assuming the L22-14v-like LinearProbe() defaults")
        probe = LinearProbe()
    rf = np.asarray(rf)
    single = rf.ndim == 2
    frames_rf = rf[None] if single else rf
    if z_range is None:
        t_end = t0 + frames_rf.shape[1] / probe.sampling_frequency
        # stop 16 carrier periods before the record ends, and where the steered wave still reaches
        # every element's echo inside the record: the last samples hold only part of an echo (and
        # the zero-phase band-pass wraps them around), which made false maxima in noise-only frames
        aperture = probe.pitch * (probe.n_elements - 1)
        depth = probe.speed_of_sound * (t_end - 16 / probe.center_frequency) / 2
        z_range = (1.0, max(1.5, depth * np.cos(tx_angle) - aperture * abs(np.sin(tx_angle))))
    x, z = default_grid(probe, z_range, pixel)
    chosen = select_channels(probe.n_elements, channels) if np.ndim(channels) == 0 else np.asarray(channels, int)
    frames = range(len(frames_rf))
    if progress:
        from rich.progress import track

        frames = track(frames, description="DAS + WA")
    out = []
    for f in frames:
        frame = frames_rf[f]
        usable = np.isfinite(frame).all(axis=0)
        use = chosen if usable[chosen].all() else chosen[usable[chosen]]  # NaN channels sit the frame out
        frame = np.where(np.isfinite(frame), frame, 0.0) if not usable.all() else frame
        image, counts = beamform_das(frame, probe, x, z, tx_angle=tx_angle, t0=t0, f_number=f_number, channels=use, return_counts=True)
        pos = weighted_average_localize(np.abs(image), x, z, threshold_db=threshold_db, radius=radius, false_alarms=false_alarms, noise_scale=np.sqrt(counts))
        out.append(np.column_stack([np.full(len(pos), f), pos]))
    if single:
        return out[0][:, 1:]
    return np.concatenate(out) if out else np.zeros((0, 3))
