"""Private image-formation helpers shared by the simulators: speckle, gain, noise, log compression.

The simulators work in *linear envelope amplitude* (1.0 = a strong point reflector such as a wire)
and convert to 8-bit B-mode at the very end with :func:`log_compress`, as a scanner does.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.special import ndtri

# Random fields are drawn as random bytes mapped through 256-level quantile tables: an order of
# magnitude faster than Gaussian sampling, and after the point-spread blur the quantisation is
# invisible. Quantiles are taken at the bin centres so the tables have the right mean.
_LEVELS = (np.arange(256) + 0.5) / 256.0
_GAUSSIAN_TABLE = ndtri(_LEVELS).astype(np.float32)
_RAYLEIGH_TABLE = np.sqrt(-2.0 * np.log1p(-_LEVELS)).astype(np.float32)  # sigma 1, mean sqrt(pi/2)


def _random_field(rng: np.random.Generator, shape: tuple[int, ...], table: np.ndarray) -> np.ndarray:
    count = int(np.prod(shape))
    index = np.frombuffer(rng.bytes(count), np.uint8).reshape(-1, shape[-1])
    return cv2.LUT(index, table).reshape(shape)


def rayleigh_speckle(
    shape: tuple[int, int],
    grain_px: tuple[float, float],
    rng: np.random.Generator,
    downsample: int = 2,
    modulation: np.ndarray | None = None,
) -> np.ndarray:
    """Fully developed speckle: the envelope of band-limited complex Gaussian noise.

    Parameters
    ----------
    shape : (H, W) of the output.
    grain_px : (lateral, axial) standard deviation, in output pixels, of the Gaussian point-spread
        function that correlates the noise; speckle grains are about 2.4x this wide.
    rng : random generator (the only source of randomness).
    downsample : generate at 1/downsample resolution and upsample bilinearly. The grains are several
        pixels wide, so this loses nothing visible and is ``downsample**2`` times cheaper.
    modulation : optional small 2D array of echogenicity multipliers, stretched (bicubic) over the
        frame: slow variations of the medium.

    Returns
    -------
    (H, W) float32 envelope with mean ~1 (Rayleigh distributed).
    """
    height, width = shape
    step = max(1, int(downsample))
    # keep at least ~1.2 px of blur at the coarse resolution so upsampling stays smooth
    sigma_x = max(grain_px[0] / step, 0.6)
    sigma_y = max(grain_px[1] / step, 0.6)
    small = (-(-height // step) + 2, -(-width // step) + 2)
    noise = _random_field(rng, (2,) + small, _GAUSSIAN_TABLE)
    real = cv2.GaussianBlur(noise[0], (0, 0), sigmaX=sigma_x, sigmaY=sigma_y, borderType=cv2.BORDER_REFLECT)
    imag = cv2.GaussianBlur(noise[1], (0, 0), sigmaX=sigma_x, sigmaY=sigma_y, borderType=cv2.BORDER_REFLECT)
    envelope = cv2.magnitude(real, imag)
    if modulation is not None:
        envelope *= cv2.resize(np.asarray(modulation, np.float32), (small[1], small[0]), interpolation=cv2.INTER_CUBIC)
    if step > 1:
        envelope = cv2.resize(envelope, (small[1] * step, small[0] * step), interpolation=cv2.INTER_LINEAR)
        off = step
        envelope = envelope[off : off + height, off : off + width]
    else:
        envelope = envelope[:height, :width]
    # the blur shrinks the variance; normalise analytically (not per image) so frames stay comparable
    gain = 2.0 * np.sqrt(np.pi) * np.sqrt(sigma_x * sigma_y)  # 1/std of the blurred field
    rayleigh_mean = np.sqrt(np.pi / 2.0)
    return np.ascontiguousarray(envelope * np.float32(gain / rayleigh_mean))


def electronic_noise(shape: tuple[int, int], level: float, rng: np.random.Generator) -> np.ndarray:
    """White receiver noise after envelope detection (Rayleigh, mean ``level``), (H, W) float32."""
    if level <= 0:
        return np.zeros(shape, np.float32)
    return _random_field(rng, tuple(shape), _RAYLEIGH_TABLE) * np.float32(level / np.sqrt(np.pi / 2.0))


def depth_gain(height: int, depth_mm: float, attenuation_db_per_mm: float, tgc_compensation: float) -> np.ndarray:
    """Net gain per row (H, 1) float32: round-trip attenuation partly undone by time-gain compensation.

    ``tgc_compensation`` = 1 undoes the attenuation exactly; real operators set the TGC sliders by
    eye, so the simulators use a little less than 1 and add a gentle bump.
    """
    depth = np.linspace(0.0, depth_mm, height, dtype=np.float64)
    net_db = -attenuation_db_per_mm * depth * (1.0 - tgc_compensation)
    bump_db = 1.5 * np.sin(np.pi * depth / max(depth_mm, 1e-6))  # TGC sliders are never flat
    return (10.0 ** ((net_db + bump_db) / 20.0)).astype(np.float32)[:, None]


def log_compress(envelope: np.ndarray, dynamic_range_db: float, reference: float = 1.0) -> np.ndarray:
    """Scanner-style log compression to uint8: ``reference`` maps to 255, ``reference`` minus
    ``dynamic_range_db`` dB (and anything weaker) to 0."""
    env = cv2.max(np.asarray(envelope, np.float32), 1e-12)
    # grey = 255/DR * (20 log10(env/ref) + DR), written for cv2's natural log and saturating cast
    scale = 255.0 / dynamic_range_db * 20.0 / np.log(10.0)
    offset = 255.0 - scale * np.log(reference)
    log_env = cv2.log(env)
    return cv2.addWeighted(log_env, scale, log_env, 0.0, offset, dtype=cv2.CV_8U)
