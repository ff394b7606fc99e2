"""Linear-array probe and plane-wave acquisition geometry shared by the ULM simulator and localizers.

Coordinates: x lateral (mm, 0 at the array centre, growing towards the last element), z depth (mm,
0 on the array face, growing into the medium). Times in seconds; the sample ``i`` of a channel was
recorded at ``t0 + i / sampling_frequency``.

The one timing convention every ULM stage uses: an echo from a point ``p`` reaches element ``k`` at

    tau_k(p) = (n . p - min_j n . e_j) / c + |p - e_k| / c,      n = (sin(angle), cos(angle)),

i.e. the plane wave leaves the first-firing element at t = 0 (PyMUST's ``txdelayPlane`` convention),
and "reaches" means the reference instant of the two-way pulse (its envelope maximum, see
:meth:`LinearProbe.two_way_pulse`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class LinearProbe:
    """A linear array at z = 0 (L22-14v-like defaults: 128 elements, 0.1 mm pitch, 15.625 MHz).

    Parameters
    ----------
    n_elements : int
        Number of elements (channels).
    pitch : float
        Element spacing in mm.
    element_width : float
        Element width in mm (for the directivity of the simulator).
    center_frequency : float
        Centre frequency in Hz.
    sampling_frequency : float
        RF sampling frequency in Hz.
    speed_of_sound : float
        Speed of sound in mm/s (1540 m/s = 1.54e6 mm/s).
    fractional_bandwidth : float
        One-way -6 dB fractional bandwidth of the element response.
    """

    n_elements: int = 128
    pitch: float = 0.1
    element_width: float = 0.08
    center_frequency: float = 15.625e6
    sampling_frequency: float = 62.5e6
    speed_of_sound: float = 1.54e6
    fractional_bandwidth: float = 0.67

    @property
    def wavelength(self) -> float:
        """Wavelength in mm at the centre frequency."""
        return self.speed_of_sound / self.center_frequency

    @property
    def element_x(self) -> np.ndarray:
        """(n_elements,) lateral element positions in mm, centred on 0."""
        return (np.arange(self.n_elements) - (self.n_elements - 1) / 2.0) * self.pitch

    def to_dict(self) -> dict:
        """Plain dict of the fields (for npz/JSON storage)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LinearProbe":
        """Inverse of :meth:`to_dict`; ignores unknown keys."""
        names = cls.__dataclass_fields__.keys()
        return cls(**{k: type(getattr(cls, k))(np.asarray(v).item()) for k, v in values.items() if k in names})

    def two_way_pulse(self, t: np.ndarray) -> np.ndarray:
        """Two-way (transmit-receive) pulse at times ``t`` (s), envelope maximum at t = 0, peak 1.

        A one-cycle sine burst at the centre frequency filtered twice by a Gaussian band-pass of the
        probe's fractional bandwidth (transmit and receive), computed on a fine grid and interpolated.
        """
        fine_t, fine_pulse = _two_way_pulse_table(self.center_frequency, self.fractional_bandwidth)
        return np.interp(np.asarray(t, dtype=float), fine_t, fine_pulse, left=0.0, right=0.0)


_PULSE_CACHE: dict = {}


def _two_way_pulse_table(fc: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    key = (float(fc), float(bandwidth))
    if key in _PULSE_CACHE:
        return _PULSE_CACHE[key]
    fs_fine = fc * 256  # 256 samples per period: linear interpolation error far below any fit noise
    n = 1 << 15
    t = (np.arange(n) - n // 2) / fs_fine
    burst = np.where((t >= 0) & (t < 1 / fc), np.sin(2 * np.pi * fc * t), 0.0)
    f = np.fft.rfftfreq(n, 1 / fs_fine)
    sigma_f = bandwidth * fc / (2 * np.sqrt(2 * np.log(2)))
    response = np.exp(-0.5 * ((f - fc) / sigma_f) ** 2)
    spectrum = np.fft.rfft(np.fft.ifftshift(burst)) * response**2
    pulse = np.fft.fftshift(np.fft.irfft(spectrum, n))
    # analytic-signal envelope to put its maximum at t = 0
    analytic_spec = np.fft.fft(pulse)
    h = np.zeros(n)
    h[0] = 1
    h[1 : n // 2] = 2
    h[n // 2] = 1
    envelope = np.abs(np.fft.ifft(analytic_spec * h))
    peak = int(np.argmax(envelope))
    t_shifted = t - t[peak]
    pulse = pulse / envelope[peak]
    keep = envelope > 1e-6 * envelope[peak]
    first, last = np.flatnonzero(keep)[[0, -1]]
    table = (t_shifted[first : last + 1].copy(), pulse[first : last + 1].copy())
    _PULSE_CACHE[key] = table
    return table


def transmit_time(points: np.ndarray, probe: LinearProbe, tx_angle: float = 0.0) -> np.ndarray:
    """Time (s) at which a plane wave steered by ``tx_angle`` (radians) reaches ``points`` (..., 2)."""
    points = np.asarray(points, dtype=float)
    n = np.array([np.sin(tx_angle), np.cos(tx_angle)])
    first_fired = np.min(probe.element_x * n[0])
    return (points @ n - first_fired) / probe.speed_of_sound


def echo_times(points: np.ndarray, probe: LinearProbe, tx_angle: float = 0.0) -> np.ndarray:
    """(..., n_elements) two-way arrival times (s) of echoes from ``points`` (..., 2) at each element."""
    points = np.asarray(points, dtype=float)
    dx = points[..., 0:1] - probe.element_x
    receive = np.sqrt(dx**2 + points[..., 1:2] ** 2) / probe.speed_of_sound
    return transmit_time(points, probe, tx_angle)[..., None] + receive
