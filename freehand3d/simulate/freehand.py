"""Simulated freehand sweeps: a speckle volume sliced along a smooth hand-held trajectory.

The medium has two parts, both fixed in the Reference (volume) frame, so that what the probe sees
depends only on where the image plane is -- the property sensorless tracking learns from:

- an *echogenicity* volume (linear amplitude, 1 = average tissue) with a few structures: skin,
  fat and muscle layers with fascia, vessels (anechoic lumen, bright wall), round lesions, point
  calcifications and a deep bone-like reflector with its shadow. This is the ground-truth volume a
  reconstruction is compared against.
- a periodic, band-limited complex Gaussian field (the scatterers seen through the point-spread
  function). Its envelope is the speckle: it moves with in-plane motion and decorrelates over ~1 mm
  of out-of-plane motion, like real speckle.

Each frame samples both trilinearly (torch ``grid_sample``, on ``device``) at the world position of
every pixel, multiplies echogenicity by the speckle envelope, applies depth attenuation with TGC and
receiver noise, and log-compresses to uint8.

Frames: (x = column, y = row) pixels; ``ImageToProbe`` maps them to the probe frame (origin at the
centre of the transducer face, x lateral, y depth, z elevation). ``ProbeToReference`` is the
trajectory; the Reference frame is the volume frame (x lateral, y depth, z sweep direction).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from freehand3d import geometry
from freehand3d.simulate import _speckle
from freehand3d.sweep import Sweep

#: TUS-REC pixel spacing (sx, sy) mm/px of its 480 x 640 frames.
TUSREC_SPACING = (0.229389190673828, 0.220979690551758)


@dataclass
class EchoVolume:
    """Echogenicity (linear amplitude, 1 = average tissue) on a regular grid in Reference mm.

    Attributes
    ----------
    data : (Z, Y, X) float32.
    origin : (3,) x, y, z of the centre of voxel [0, 0, 0], mm.
    spacing : (3,) voxel size along x, y, z, mm.
    """

    data: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data, np.float32)
        if self.data.ndim != 3:
            raise ValueError(f"volume data must be (Z, Y, X), got shape {self.data.shape}")
        self.origin = np.asarray(self.origin, float).reshape(3)
        self.spacing = np.asarray(self.spacing, float).reshape(3)
        if not (self.spacing > 0).all():
            raise ValueError(f"volume spacing must be positive, got {self.spacing}")

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """(low corner, high corner) voxel centres, x y z mm."""
        size = np.array(self.data.shape[::-1], float) - 1
        return self.origin, self.origin + size * self.spacing

    def to_image(self):
        """The volume as a SimpleITK image (origin, spacing set; identity direction), e.g. to write
        it with ``SimpleITK.WriteImage`` and compare a reconstruction against it."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.data)
        image.SetOrigin(tuple(float(v) for v in self.origin))
        image.SetSpacing(tuple(float(v) for v in self.spacing))
        return image

    @classmethod
    def from_truth(cls, truth: dict) -> "EchoVolume":
        """Rebuild the volume from a :func:`simulate_freehand` truth dict (or its ``.truth.npz``)."""
        return cls(truth["volume"], truth["volume_origin"], truth["volume_spacing"])

    def sample(self, points) -> np.ndarray:
        """Trilinear echogenicity at world points (..., 3) mm (0 outside the volume)."""
        from scipy.ndimage import map_coordinates

        p = np.asarray(points, float)
        index = (p - self.origin) / self.spacing
        coords = index.reshape(-1, 3)[:, ::-1].T  # (z, y, x) rows
        values = map_coordinates(self.data, coords, order=1, mode="constant", cval=0.0)
        return values.reshape(p.shape[:-1])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], coarse: tuple[int, ...]) -> np.ndarray:
    """Smooth random field in [-1, 1] of ``shape`` (2D or 3D): a coarse random grid interpolated
    (bi/trilinear; torch because it is an order of magnitude faster than scipy's zoom here)."""
    import torch

    values = rng.uniform(-1.0, 1.0, coarse).astype(np.float32)
    if len(shape) == 2:
        # interfaces: bicubic, so they bend smoothly instead of in straight pieces
        return cv2.resize(values, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_CUBIC)
    grid = torch.from_numpy(values)[None, None]
    out = torch.nn.functional.interpolate(grid, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=True)
    return out[0, 0].numpy()


def _index_range(axis: np.ndarray, lo: float, hi: float) -> slice:
    """Slice of the sorted coordinate array ``axis`` covering [lo, hi] (structures only touch a box)."""
    return slice(int(np.searchsorted(axis, lo, "left")), int(np.searchsorted(axis, hi, "right")))


def make_echo_volume(
    low,
    high,
    voxel_mm: float = 0.5,
    seed: int | np.random.Generator = 0,
    max_voxels: int = 12_000_000,
) -> EchoVolume:
    """A random tissue-like echogenicity volume covering the box ``low``..``high`` (x, y, z mm).

    y is depth (the skin at y = 0), z the sweep direction. Structures: skin line, fat layer, fascia,
    striated muscle, 2-3 vessels running roughly along z, 3-5 round lesions (darker or brighter, some
    with a bright rim), point calcifications, and a deep bright bone surface with a shadow below.
    The voxel size grows when the box would need more than ``max_voxels`` voxels (memory bound).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    low = np.asarray(low, float)
    high = np.asarray(high, float)
    size_mm = np.maximum(high - low, voxel_mm)
    voxel = float(voxel_mm)
    while np.prod(np.ceil(size_mm / voxel) + 1) > max_voxels:
        voxel *= 1.25
    nx, ny, nz = (int(v) for v in (np.ceil(size_mm / voxel) + 1))
    x = (low[0] + np.arange(nx) * voxel).astype(np.float32)
    y = (low[1] + np.arange(ny) * voxel).astype(np.float32)
    z = (low[2] + np.arange(nz) * voxel).astype(np.float32)
    Y = y[None, :, None]

    def coarse(n: int, mm: float) -> int:
        return max(2, int(n * voxel / mm) + 2)

    def soft_step(d, width: float):
        # smooth 0 -> 1 over about +-2 width (a cubic smoothstep: much cheaper than tanh)
        t = np.clip(d * np.float32(0.25 / width) + np.float32(0.5), 0.0, 1.0)
        return t * t * (3.0 - 2.0 * t)

    def thin_line(d, half: float):
        return np.exp(np.float32(-0.5 / half**2) * d * d)

    def interface(mean_depth: float, amplitude: float) -> np.ndarray:
        wave = _smooth_noise(rng, (nz, nx), (coarse(nz, 30), coarse(nx, 30)))
        return (np.float32(mean_depth) + np.float32(amplitude) * wave)[:, None, :]

    def add_line(vol, surface, amplitude: float, half: float) -> None:
        # a bright thin interface, evaluated only in the depth band it can reach
        band = _index_range(y, float(surface.min()) - 4 * half, float(surface.max()) + 4 * half)
        vol[:, band, :] += np.float32(amplitude) * thin_line(y[None, band, None] - surface, half)

    # slowly varying tissue brightness (+-15 %)
    vol = 1.0 + 0.15 * _smooth_noise(rng, (nz, ny, nx), (coarse(nz, 25), coarse(ny, 25), coarse(nx, 25)))

    fat_bottom = interface(rng.uniform(5.0, 9.0), 1.5)
    muscle_bottom = interface(float(fat_bottom.mean()) + rng.uniform(18.0, 28.0), 3.0)
    below_fat = soft_step(Y - fat_bottom, 0.4)
    in_muscle = below_fat * (1.0 - soft_step(Y - muscle_bottom, 0.4))
    # fat is hypoechoic; muscle fibres are striations elongated along x (and a little along z)
    striation = _smooth_noise(rng, (nz, ny, nx), (coarse(nz, 6), coarse(ny, 1.2), coarse(nx, 12)))
    vol *= (0.5 + 0.5 * below_fat) * (1.0 + 0.8 * striation * in_muscle)
    del below_fat, in_muscle, striation
    add_line(vol, np.full((1, 1, 1), 0.8, np.float32), 2.2, 0.35)  # skin
    add_line(vol, fat_bottom, 2.5, 0.35)  # fascia
    add_line(vol, muscle_bottom, 1.8, 0.4)

    depth_max = float(high[1])
    # vessels: anechoic lumen, bright wall; centrelines gently curving as functions of z
    for _ in range(int(rng.integers(2, 4))):
        radius = rng.uniform(1.5, 4.5)
        x0 = rng.uniform(low[0] + 0.15 * size_mm[0], high[0] - 0.15 * size_mm[0])
        y0 = rng.uniform(max(float(fat_bottom.mean()) + radius + 2, 8.0), max(depth_max * 0.6, radius + 12.0))
        slope = rng.uniform(-0.25, 0.25)
        bend, period, phase = rng.uniform(1.0, 5.0), rng.uniform(40.0, 120.0), rng.uniform(0, 2 * np.pi)
        cx = (x0 + slope * (z - z.mean()) + bend * np.sin(2 * np.pi * z / period + phase)).astype(np.float32)
        cy = (y0 + 0.4 * bend * np.cos(2 * np.pi * z / period + phase)).astype(np.float32)
        reach = radius + 2.0
        ys = _index_range(y, float(cy.min()) - reach, float(cy.max()) + reach)
        xs = _index_range(x, float(cx.min()) - reach, float(cx.max()) + reach)
        r = np.sqrt((x[None, None, xs] - cx[:, None, None]) ** 2 + (y[None, ys, None] - cy[:, None, None]) ** 2)
        lumen = 1.0 - soft_step(r - np.float32(radius), 0.25)
        vol[:, ys, xs] = vol[:, ys, xs] * (1.0 - 0.96 * lumen) + 2.0 * thin_line(r - np.float32(radius + 0.3), 0.3)
    # lesions (ellipsoids), evaluated in their bounding boxes
    for _ in range(int(rng.integers(4, 9))):
        radius = rng.uniform(3.0, 10.0)
        margin = np.array([0.1 * size_mm[0], 10.0, 0.05 * size_mm[2]])
        centre = rng.uniform(low + margin, np.maximum(high - margin, low + margin + 1e-3))
        axes = radius * rng.uniform(0.7, 1.3, 3)
        box = [_index_range(c, float(m - 1.6 * a), float(m + 1.6 * a)) for c, m, a in zip((x, y, z), centre, axes)]
        r = np.sqrt(
            ((x[None, None, box[0]] - centre[0]) / axes[0]) ** 2
            + ((y[None, box[1], None] - centre[1]) / axes[1]) ** 2
            + ((z[box[2], None, None] - centre[2]) / axes[2]) ** 2
        ).astype(np.float32)
        inside = 1.0 - soft_step((r - 1.0) * np.float32(radius), 0.5)
        contrast = np.float32(rng.choice([0.35, 0.6, 1.7, 2.2]))
        sub = (box[2], box[1], box[0])
        vol[sub] = vol[sub] * (1.0 + (contrast - 1.0) * inside)
        if rng.uniform() < 0.5:
            vol[sub] += 1.2 * thin_line((r - 1.0) * np.float32(radius), 0.35)
    # a deep bone-like surface: very bright, nothing below it (acoustic shadow)
    bone = interface(depth_max * rng.uniform(0.85, 0.95), 3.0)
    deep = _index_range(y, float(bone.min()) - 2.0, np.inf)
    vol[:, deep, :] *= 1.0 - 0.95 * soft_step(y[None, deep, None] - bone - np.float32(0.6), 0.3)
    add_line(vol, bone, 6.0, 0.45)
    # point calcifications
    n_points = int(rng.integers(20, 60))
    idx = np.stack([rng.integers(0, nz, n_points), rng.integers(0, ny, n_points), rng.integers(0, nx, n_points)])
    vol[tuple(idx)] += rng.uniform(3.0, 8.0, n_points).astype(np.float32)
    vol[:, y < 0, :] = 0.0  # nothing above the skin (coupling gel)
    np.maximum(vol, 0.0, out=vol)
    return EchoVolume(vol.astype(np.float32, copy=False), np.array([x[0], y[0], z[0]], float), np.full(3, voxel))


def freehand_trajectory(
    n_frames: int,
    speed_mm: float = 0.3,
    tilt_deg: float = 8.0,
    rock_deg: float = 5.0,
    in_plane_deg: float = 4.0,
    lateral_mm: float = 4.0,
    axial_mm: float = 1.0,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Smooth hand-held ProbeToReference poses (N, 4, 4), moving mostly along +z (elevation).

    Parameters
    ----------
    n_frames : number of poses.
    speed_mm : mean elevational motion per frame; the speed varies smoothly between ~0.3x and ~1.7x.
    tilt_deg : amplitude of the fanning tilt about the probe's lateral axis.
    rock_deg : amplitude of the rocking about the probe's depth axis.
    in_plane_deg : amplitude of the in-plane rotation (about the elevation axis).
    lateral_mm, axial_mm : amplitude of the drift across the sweep and of the pressure changes.
    seed : random seed (or generator).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    n = int(n_frames)
    if n < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")

    def smooth(cycles: tuple[float, float]) -> np.ndarray:
        # a few sinusoids with random frequencies and phases: smooth, bounded, not periodic
        t = np.linspace(0.0, 1.0, n)
        k = 3
        freqs = rng.uniform(*cycles, k) * max(n / 200.0, 0.25)
        phases = rng.uniform(0, 2 * np.pi, k)
        amps = rng.uniform(0.4, 1.0, k)
        return (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0) / amps.sum()

    speed = speed_mm * np.clip(1.0 + 0.7 * smooth((0.5, 3.0)), 0.3, 1.7)
    elevation = np.concatenate([[0.0], np.cumsum(speed[1:])])
    lateral = lateral_mm * smooth((0.3, 2.0))
    axial = axial_mm * (0.5 + 0.5 * smooth((0.5, 3.0)))
    tilt = np.radians(tilt_deg) * smooth((0.3, 2.0))
    rock = np.radians(rock_deg) * smooth((0.3, 2.0))
    spin = np.radians(in_plane_deg) * smooth((0.3, 2.0))
    # hand tremor: small, fast, on top of the smooth motion
    tremor = rng.standard_normal((n, 6)) * np.array([0.03, 0.02, 0.02, 0.05, 0.05, 0.05])
    rot = Rotation.from_euler(
        "xyz", np.stack([tilt, rock, spin], axis=1) + np.radians(tremor[:, 3:]), degrees=False
    ).as_matrix()
    trans = np.stack([lateral, axial, elevation], axis=1) + tremor[:, :3]
    return geometry.rigid(rot, trans)


def _freehand_image_to_probe(frame_size, spacing) -> np.ndarray:
    height, width = frame_size
    sx, sy = spacing
    # probe origin at the centre of the transducer face (top row, middle column)
    return geometry.compose(geometry.translation([-(width - 1) / 2.0 * sx, 0.0, 0.0]), geometry.scaling([sx, sy, 1.0]))


#: texture voxels (x, y, z) mm: at least 2 voxels per PSF sigma on every axis, otherwise linear
#: interpolation of the complex field between voxels cuts dark cracks into the speckle
_TEXTURE_VOXEL_MM = np.array([0.25, 0.14, 0.3])
_TEXTURE_SHAPE = (112, 224, 144)  # (z, y, x): non-commensurate periods of 31-36 mm
#: point-spread sigma (x lateral, y axial, z elevation) mm: speckle grains ~1.3 x 0.65 mm,
#: decorrelating over ~1.5 mm of out-of-plane motion
_TEXTURE_SIGMA_MM = (0.55, 0.28, 0.7)


@functools.lru_cache(maxsize=1)
def _speckle_texture() -> np.ndarray:
    """Periodic band-limited complex Gaussian field (2, Z+1, Y+1, X+1) float32 with unit-variance
    components; the extra last slice in every axis repeats the first so trilinear sampling wraps
    without a seam.

    Built once per process from a fixed seed (it takes ~1 s); every sweep slices it at its own
    random offset, so sweeps still see different speckle."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(20240917)
    field = rng.standard_normal((2,) + _TEXTURE_SHAPE, dtype=np.float32)
    sigma_vox = (np.asarray(_TEXTURE_SIGMA_MM) / _TEXTURE_VOXEL_MM)[::-1]  # (z, y, x)
    for c in range(2):
        field[c] = gaussian_filter(field[c], sigma=sigma_vox, mode="wrap")
    field /= field.std(axis=(1, 2, 3), keepdims=True)
    texture = np.pad(field, ((0, 0), (0, 1), (0, 1), (0, 1)), mode="wrap")
    texture.setflags(write=False)
    return texture


def _coarse_pixel_grid(height: int, width: int, step: tuple[int, int], device):
    """Column and row coordinates of a grid ``step`` = (sx, sy) times coarser than the frame, placed
    the way bilinear upsampling with align_corners=False expects (coarse sample i sits at fine pixel
    (i + 0.5) * step - 0.5), covering the frame rounded up to whole steps."""
    import torch

    nx, ny = -(-width // step[0]), -(-height // step[1])
    xs = (torch.arange(nx, dtype=torch.float32, device=device) + 0.5) * step[0] - 0.5
    ys = (torch.arange(ny, dtype=torch.float32, device=device) + 0.5) * step[1] - 0.5
    return xs, ys


def _map_grid(mats: np.ndarray, grid, period=None):
    """Map the coarse pixel grid through (B, 4, 4) affine matrices -> (1, B, ny, nx, 3) float32.

    The grid is separable, so a point is column term + row term + offset: one add per output
    element instead of a matrix product. With ``period`` (3,) the coordinates are wrapped into
    [0, period): each term is wrapped on its own (cheap, they are small) and the sum, which then
    lies in [0, 2 period), needs one conditional subtraction -- much faster than a remainder over
    every pixel. Matrices are composed in float64 and rounded to float32 only here (coordinates
    accurate to ~1e-4 voxel)."""
    import torch

    xs, ys = grid
    m = torch.as_tensor(np.ascontiguousarray(mats[:, :3, :]), dtype=torch.float64, device=xs.device)
    col_term = xs.double()[None, None, :, None] * m[:, None, None, :, 0]  # (B, 1, nx, 3)
    row_term = ys.double()[None, :, None, None] * m[:, None, None, :, 1] + m[:, None, None, :, 3]  # (B, ny, 1, 3)
    if period is None:
        return (col_term.float() + row_term.float())[None]
    p64 = torch.as_tensor(period, dtype=torch.float64, device=xs.device)
    p32 = p64.float()
    out = torch.remainder(col_term, p64).float() + torch.remainder(row_term, p64).float()
    out = torch.where(out >= p32, out - p32, out)
    return out[None]


def _upsample(values, height: int, width: int, step: tuple[int, int]):
    """(C, B, ny, nx) coarse samples -> (C, B, height, width) by bilinear interpolation."""
    import torch

    if step == (1, 1):
        return values[..., :height, :width]
    c, b, ny, nx = values.shape
    up = torch.nn.functional.interpolate(
        values.reshape(c * b, 1, ny, nx), size=(ny * step[1], nx * step[0]), mode="bilinear", align_corners=False
    )
    return up.reshape(c, b, ny * step[1], nx * step[0])[..., :height, :width]


def simulate_freehand(
    n_frames: int = 200,
    frame_size: tuple[int, int] = (480, 640),
    spacing: tuple[float, float] = TUSREC_SPACING,
    trajectory=None,
    volume: EchoVolume | None = None,
    speed_mm: float = 0.3,
    frame_interval_s: float = 0.05,
    dynamic_range_db: float = 45.0,
    noise: float = 0.01,
    seed: int = 0,
    reference_to_tracker=None,
    device: str = "cpu",
    batch_frames: int | None = None,
    progress=None,
) -> tuple[Sweep, dict]:
    """Simulate a tracked freehand sweep through a tissue-like speckle volume.

    Parameters
    ----------
    n_frames : number of frames (ignored when ``trajectory`` is an array of poses).
    frame_size : (H, W); DualTrack needs (480, 640), the default. (120, 160) is a fast small option.
    spacing : (sx, sy) mm/px; default TUS-REC's.
    trajectory : None (a random smooth trajectory from :func:`freehand_trajectory` with
        ``speed_mm``), a dict of :func:`freehand_trajectory` keyword arguments, or (N, 4, 4) rigid
        ProbeToReference poses.
    volume : the echogenicity volume to slice; default a random one from :func:`make_echo_volume`
        covering the sweep.
    speed_mm : mean elevational motion per frame of the default trajectory.
    frame_interval_s : time between frames.
    dynamic_range_db : log-compression range (average tissue lands near grey 100).
    noise : receiver noise amplitude relative to average tissue.
    seed : everything random derives from it; the same seed gives the same bytes.
    reference_to_tracker : (4, 4) rigid placement of the Reference (volume) frame in the tracker
        frame; default identity, so the tracker frame is the volume frame.
    device : torch device for the slicing ("cpu" or "cuda").
    batch_frames : frames sliced per ``grid_sample`` call; default as many as fit in ~2.5 million
        pixels (about 250 MB of temporaries at ~100 bytes per pixel).
    progress : optional callable ``progress(done, total)`` called after every batch.

    Returns
    -------
    sweep : :class:`~freehand3d.sweep.Sweep` with uint8 frames, ``spacing``, ``image_to_probe``,
        per-frame ``ProbeToTracker``, ``ReferenceToTracker`` (fixed) and
        ``ImageToReference`` (all consistent: ImageToReference = ReferenceToTracker^-1 ·
        ProbeToTracker · ImageToProbe).
    truth : dict of arrays — ``image_to_reference``, ``probe_to_reference``,
        ``reference_to_tracker`` (N, 4, 4); ``image_to_probe`` (4, 4); ``volume`` (Z, Y, X) float32
        echogenicity with ``volume_origin`` and ``volume_spacing`` (x, y, z mm, Reference frame);
        ``spacing``; ``seed``.

    Examples
    --------
    >>> sweep, truth = simulate_freehand(n_frames=4, frame_size=(120, 160))
    >>> sweep.frames.shape, truth["image_to_reference"].shape
    ((4, 120, 160), (4, 4, 4))
    """
    import torch

    height, width = (int(v) for v in frame_size)
    if height < 8 or width < 8:
        raise ValueError(f"frame_size must be at least 8 x 8, got {frame_size}")
    sx, sy = (float(v) for v in spacing)
    if not (sx > 0 and sy > 0):
        raise ValueError(f"spacing must be positive, got {spacing}")
    rng = np.random.default_rng(seed)
    traj_rng, volume_rng, texture_rng, noise_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**62, 4))
    if trajectory is None or isinstance(trajectory, dict):
        kwargs = {"speed_mm": speed_mm, **(trajectory or {})}
        probe_to_reference = freehand_trajectory(n_frames, seed=traj_rng, **kwargs)
    else:
        probe_to_reference = geometry.as_matrix_stack(trajectory, "trajectory").reshape(-1, 4, 4)
        if not np.all(geometry.is_rigid(probe_to_reference, atol=1e-6)):
            raise ValueError("trajectory poses must be rigid ProbeToReference transforms")
    n = len(probe_to_reference)
    image_to_probe = _freehand_image_to_probe((height, width), (sx, sy))
    image_to_reference = geometry.compose(probe_to_reference, image_to_probe)

    if volume is None:
        corners = geometry.apply(image_to_reference[:, None], geometry.frame_corners(height, width)[None])
        low = corners.reshape(-1, 3).min(axis=0) - 3.0
        high = corners.reshape(-1, 3).max(axis=0) + 3.0
        low[1] = min(low[1], -1.0)
        voxel = max(0.4, min(sx, sy) * 2.0)
        volume = make_echo_volume(low, high, voxel_mm=voxel, seed=volume_rng)
    elif not isinstance(volume, EchoVolume):
        raise ValueError("volume must be an EchoVolume (data, origin, spacing)")

    texture = _speckle_texture()
    tex_period = np.array(_TEXTURE_SHAPE[::-1], float)  # (x, y, z) voxels
    # this sweep's own piece of the (shared) speckle field
    texture_offset = texture_rng.uniform(0.0, 1.0, 3) * tex_period * _TEXTURE_VOXEL_MM

    dev = torch.device(device)
    echo_t = torch.from_numpy(volume.data)[None, None].to(dev)
    tex_t = torch.from_numpy(np.array(texture))[None].to(dev)
    # world mm -> grid_sample's [-1, 1] (align_corners=True: -1/+1 are the end voxel centres), as
    # one affine map per field so each frame needs a single small matrix product
    vol_size = np.array(volume.data.shape[::-1], float) - 1
    world_to_echo = geometry.compose(
        geometry.translation(-np.ones(3)), geometry.scaling(2.0 / (vol_size * volume.spacing)),
        geometry.translation(-volume.origin),
    )
    world_to_texture = geometry.compose(geometry.scaling(1.0 / _TEXTURE_VOXEL_MM), geometry.translation(texture_offset))
    # Sampling every pixel is the slow part, so each field is sampled only as densely as it varies:
    # echogenicity (smooth, ~0.5 mm voxels) on a grid ~0.5 mm apart, speckle (grains ~1 mm wide,
    # ~0.5 mm high) at every row but every other column, then both are upsampled bilinearly.
    echo_step = (max(1, int(volume.spacing.min() / sx)), max(1, int(volume.spacing.min() / sy)))
    speckle_step = (max(1, int(0.5 / sx)), 1)
    echo_grid = _coarse_pixel_grid(height, width, echo_step, dev)
    speckle_grid = _coarse_pixel_grid(height, width, speckle_step, dev)

    gain = _speckle.depth_gain(height, height * sy, attenuation_db_per_mm=0.1, tgc_compensation=0.8)
    # average tissue (echo 1, mean speckle 1) lands at grey ~100 of 255
    reference = 10.0 ** (dynamic_range_db * (1.0 - 100.0 / 255.0) / 20.0)
    noise_gain = (1.0 / gain) ** 0.5
    frames = np.empty((n, height, width), np.uint8)
    step = max(1, int(batch_frames) if batch_frames else 2_500_000 // (height * width))
    for start in range(0, n, step):
        stop = min(start + step, n)
        mats = image_to_reference[start:stop]
        norm = _map_grid(geometry.compose(world_to_echo, mats), echo_grid)
        echo = torch.nn.functional.grid_sample(
            echo_t, norm, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        echo = _upsample(echo, height, width, echo_step)[0]  # (B, H, W)
        # speckle: wrap into one period (the padded copy closes the seam), then to [-1, 1]
        tex_index = _map_grid(geometry.compose(world_to_texture, mats), speckle_grid, period=tex_period)
        period = torch.as_tensor(tex_period, dtype=torch.float32, device=dev)
        tex_norm = tex_index * (2.0 / period) - 1.0
        scat = torch.nn.functional.grid_sample(
            tex_t, tex_norm, mode="bilinear", padding_mode="border", align_corners=True
        )[0]
        scat = _upsample(scat, height, width, speckle_step)  # (2, B, H, W)
        envelope = torch.sqrt(scat[0] ** 2 + scat[1] ** 2) * np.float32(1.0 / np.sqrt(np.pi / 2.0))
        envelope = (envelope * echo).cpu().numpy()
        for j in range(stop - start):
            # the scanner's post-detection smoothing: without it the speckle nulls read as dark cracks
            env = cv2.GaussianBlur(envelope[j], (0, 0), sigmaX=0.18 / sx, sigmaY=0.12 / sy) * gain
            env += _speckle.electronic_noise((height, width), noise, noise_rng) * noise_gain
            frames[start + j] = _speckle.log_compress(env, dynamic_range_db, reference=reference)
        if progress is not None:
            progress(stop, n)

    if reference_to_tracker is None:
        # the tracker frame is the volume frame, so formats without a Reference frame (TUS-REC,
        # DualTrack h5: ProbeToTracker + ImageToProbe only) keep the truth volume's coordinates
        reference_to_tracker = np.eye(4)
    reference_to_tracker = geometry.as_matrix_stack(reference_to_tracker, "reference_to_tracker")
    if reference_to_tracker.shape != (4, 4) or not geometry.is_rigid(reference_to_tracker):
        raise ValueError("reference_to_tracker must be one rigid 4x4 matrix")
    probe_to_tracker = geometry.compose(reference_to_tracker, probe_to_reference)
    sweep = Sweep(
        frames=frames,
        spacing=(sx, sy),
        timestamps=np.arange(n) * float(frame_interval_s),
        transforms={
            "ProbeToTracker": probe_to_tracker,
            "ReferenceToTracker": np.broadcast_to(reference_to_tracker, (n, 4, 4)).copy(),
            "ImageToReference": image_to_reference,
        },
        image_to_probe=image_to_probe,
        frame_fields={"ImageStatus": ["OK"] * n},
        metadata={
            "UltrasoundImageOrientation": "MF",
            "SimulatedBy": f"freehand3d.simulate.simulate_freehand seed={seed}",
        },
    )
    truth = {
        "image_to_reference": image_to_reference,
        "probe_to_reference": probe_to_reference,
        "reference_to_tracker": np.broadcast_to(reference_to_tracker, (n, 4, 4)).copy(),
        "image_to_probe": image_to_probe,
        "volume": volume.data,
        "volume_origin": volume.origin,
        "volume_spacing": volume.spacing,
        "spacing": np.array([sx, sy]),
        "seed": np.int64(seed),
    }
    return sweep, truth
