"""Simulated N-wire calibration recordings with exact ground truth.

Geometry (PLUS naming, ``AToB`` maps A coordinates to B)::

    ImageToPhantom = ProbeToPhantom · ImageToProbe
    ProbeToTracker = ReferenceToTracker · PhantomToReference · ProbeToPhantom

The phantom sits in its own frame, rigidly attached to the tracked reference marker
(``PhantomToReference``, what PLUS's phantom registration finds). The simulated tracker reports
``ProbeToTracker`` and ``ReferenceToTracker`` for every frame, like the PLUS fCal recordings; a chosen
fraction of the ``ProbeToTracker`` poses can be corrupted (still flagged OK, as a glitching tracker
would) to exercise robust calibration.

The ground-truth pixel of a wire is where its line crosses the image plane, computed in closed form
(a 3x3 linear solve per wire and frame), so mapping it back through the true transforms lands on the
wire to rounding error.

Rendering works in linear envelope amplitude (1.0 = a wire echo) and log-compresses at the end: each
wire cross-section is an anisotropic blob (wider laterally than axially, a little triangular like the
real fCal echoes) followed by weaker reverberation copies below it; the background is Rayleigh
speckle; optional long thin wall/membrane echoes; depth attenuation with TGC; receiver noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from freehand3d import geometry
from freehand3d.phantoms import NWirePhantom
from freehand3d.simulate import _speckle
from freehand3d.sweep import Sweep

#: ImageToProbe found by PLUS on its fCal 1.2 test recording (FreehandCalibration3NWires.results.xml):
#: about 0.078 x 0.073 mm/px, slightly non-orthogonal, the realistic default.
PLUS_FCAL_IMAGE_TO_PROBE = np.array(
    [
        [0.00183186, 0.0729281, -0.0100928, 11.1551],
        [-0.0777188, 0.00280788, 0.00822424, 45.9713],
        [0.008793, 0.00953226, 0.0747944, -7.35909],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

#: PhantomToReference of the PLUS fCal 1.2 device set (its phantom registration), the default.
PLUS_FCAL_PHANTOM_TO_REFERENCE = np.array(
    [
        [0.00898765, -0.0136951, -0.999866, 9.59137],
        [0.0246163, -0.9996, 0.0139127, 36.0012],
        [-0.999657, -0.024738, -0.00864693, 87.8909],
        [0.0, 0.0, 0.0, 1.0],
    ]
)

NOISE_LEVELS = {"low": 0.0, "medium": 0.5, "high": 1.0}


@dataclass(frozen=True)
class NoiseSettings:
    """Image-formation settings for one noise level (linear amplitudes relative to a wire echo = 1).

    Build with :meth:`from_level`; ``level`` 0 looks like the PLUS fCal water-bath recordings (black
    background, faint speckle), 0.5 like a tissue-mimicking gel, 1 a hard case.
    """

    level: float
    background: float  # mean speckle amplitude of the medium
    receiver_noise: float  # mean amplitude of white receiver noise
    wire_amplitude_spread: float  # wires vary in brightness by up to this fraction
    blob_texture: float  # speckle modulation inside a wire echo
    n_random_walls: tuple[int, int]  # min/max extra membrane echoes per frame
    dynamic_range_db: float

    @classmethod
    def from_level(cls, noise: str | float) -> "NoiseSettings":
        if isinstance(noise, str):
            if noise not in NOISE_LEVELS:
                raise ValueError(f"noise must be one of {sorted(NOISE_LEVELS)} or a number >= 0, got {noise!r}")
            level = NOISE_LEVELS[noise]
        else:
            level = float(noise)
            if not np.isfinite(level) or level < 0:
                raise ValueError(f"noise level must be a finite number >= 0, got {noise!r}")
        return cls(
            level=level,
            # geometric steps: each level is ~8 dB brighter speckle relative to the wires; at
            # "high" the speckle sits ~34 dB below a wire echo, receiver noise ~42 dB
            background=0.003 * 6.67**level,
            receiver_noise=0.001 * 8.0**level,
            wire_amplitude_spread=0.25 + 0.2 * min(level, 1.0),
            blob_texture=0.4 + 0.2 * min(level, 1.0),
            n_random_walls=(int(round(1 * level)), 1 + int(round(2 * level))),
            dynamic_range_db=40.0,
        )


# ---------------------------------------------------------------------------- geometry


def default_image_to_probe(spacing: tuple[float, float] | None = None) -> np.ndarray:
    """A realistic ImageToProbe (pixels -> mm): PLUS's fCal 1.2 result, rescaled to ``spacing``
    (sx, sy mm/px) when given. Slightly non-orthogonal, like real calibrations."""
    itp = PLUS_FCAL_IMAGE_TO_PROBE.copy()
    if spacing is not None:
        sx, sy = (float(v) for v in spacing)
        if not (sx > 0 and sy > 0):
            raise ValueError(f"spacing must be positive, got {spacing}")
        norms = np.linalg.norm(itp[:3, :2], axis=0)
        itp[:3, 0] *= sx / norms[0]
        itp[:3, 1] *= sy / norms[1]
    return itp


def _wire_arrays(phantom: NWirePhantom) -> tuple[np.ndarray, np.ndarray]:
    fronts = np.array([w.front for w in phantom.wires], float)
    backs = np.array([w.back for w in phantom.wires], float)
    return fronts, backs


def wire_intersections(phantom: NWirePhantom, image_to_phantom) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where every wire line crosses every image plane, in closed form.

    Parameters
    ----------
    phantom : the N-wire phantom (its wires in phantom mm).
    image_to_phantom : (N, 4, 4) or (4, 4) affine maps from pixels (x = column, y = row, 0) to
        phantom mm.

    Returns
    -------
    pixels : (N, K, 2) subpixel (x, y) of the K wires (NaN where a wire is parallel to the plane).
    fractions : (N, K) position along each wire, 0 at its front end point, 1 at its back end point
        (outside [0, 1] the physical wire does not reach the plane).
    points : (N, K, 3) the intersection points in phantom mm.
    """
    m = geometry.as_matrix_stack(image_to_phantom, "image_to_phantom")
    single = m.ndim == 2
    m = m.reshape(-1, 4, 4)
    fronts, backs = _wire_arrays(phantom)
    direction = backs - fronts
    n, k = len(m), len(fronts)
    # front + t * direction = origin + x * col_axis + y * row_axis  ->  [col row -dir] [x y t]^T = front - origin
    system = np.empty((n, k, 3, 3))
    system[:, :, :, 0] = m[:, None, :3, 0]
    system[:, :, :, 1] = m[:, None, :3, 1]
    system[:, :, :, 2] = -direction[None]
    rhs = fronts[None] - m[:, None, :3, 3]
    det = np.linalg.det(system)
    scale = np.linalg.norm(m[:, None, :3, 0], axis=-1) * np.linalg.norm(m[:, None, :3, 1], axis=-1)
    scale = scale * np.linalg.norm(direction, axis=-1)[None]
    parallel = np.abs(det) <= 1e-12 * scale
    system[parallel] = np.eye(3)
    solution = np.linalg.solve(system, rhs[..., None])[..., 0]
    solution[parallel] = np.nan
    pixels = solution[..., :2]
    fractions = solution[..., 2]
    points = fronts[None] + fractions[..., None] * direction[None]
    if single:
        return pixels[0], fractions[0], points[0]
    return pixels, fractions, points


def _phantom_frame(phantom: NWirePhantom) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre and axes of the wire pattern: (centre, wire direction, lateral axis, depth axis).

    The wire direction is the mean direction of the wires, the lateral axis the main spread of their
    cross-section, the depth axis points from the first pattern towards the last one (PLUS lists
    patterns top to bottom in the image).
    """
    fronts, backs = _wire_arrays(phantom)
    dirs = backs - fronts
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    wire_dir = dirs.mean(axis=0)
    wire_dir /= np.linalg.norm(wire_dir)
    mids = 0.5 * (fronts + backs)
    centre = mids.mean(axis=0)
    flat = mids - centre
    flat -= (flat @ wire_dir)[:, None] * wire_dir
    _, _, vt = np.linalg.svd(flat, full_matrices=True)
    lateral = vt[0] - (vt[0] @ wire_dir) * wire_dir
    lateral /= np.linalg.norm(lateral)
    depth = np.cross(wire_dir, lateral)
    per_pattern = np.array([np.mean([0.5 * (w.front + w.back) for w in nw.wires], axis=0) for nw in phantom.nwires])
    spread = (per_pattern[-1] - per_pattern[0]) @ depth
    if abs(spread) < 1e-9:
        # patterns side by side: keep the phantom's own -z as "down" (wires nearer the top plate first)
        spread = -depth[2] if abs(depth[2]) > 1e-9 else 1.0
    if spread < 0:
        depth = -depth
    # columns such that the image normal (column x row) points against the wire direction, as in
    # PLUS's fCal recordings: wire 1 then appears on the right and PLUS labels points right to left
    lateral = np.cross(wire_dir, depth)
    return centre, wire_dir, lateral, depth


def _smooth_random(rng: np.random.Generator, n: int, n_components: int = 4) -> np.ndarray:
    """(n,) smooth random signal in about [-1, 1]: a few random low-frequency sinusoids."""
    t = np.linspace(0.0, 1.0, n)
    freqs = rng.uniform(0.3, 2.5, n_components)
    phases = rng.uniform(0, 2 * np.pi, n_components)
    amps = rng.uniform(0.5, 1.0, n_components)
    sig = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None] + phases[:, None])).sum(axis=0)
    return sig / amps.sum() * 1.6


def nwire_probe_poses(
    phantom: NWirePhantom,
    image_to_probe,
    n_frames: int,
    frame_size: tuple[int, int] = (616, 820),
    tilt_deg: float = 12.0,
    yaw_deg: float = 10.0,
    in_plane_deg: float = 8.0,
    slide_fraction: float = 0.35,
    shift_mm: tuple[float, float] = (3.0, 2.0),
    margin_px: float = 30.0,
    seed: int | np.random.Generator = 0,
) -> np.ndarray:
    """Freehand-like ProbeToPhantom poses (N, 4, 4) whose images cross every wire inside the frame.

    The nominal pose looks straight along the wires with the wire pattern centred in the image; each
    frame adds smooth random motion: ``tilt_deg`` about the image's lateral axis (out-of-plane tilt,
    the motion that moves the diagonal-wire echo), ``yaw_deg`` about its depth axis,
    ``in_plane_deg`` about the plane normal, sliding along the wires by up to ``slide_fraction`` of
    their length, and lateral / axial shifts ``shift_mm``. A frame whose wires would leave the frame
    (by ``margin_px``) or miss the physical wire segments has its motion scaled down until they fit.

    Raises
    ------
    ValueError
        If even the nominal pose cannot show every wire (frame too small for the phantom).
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    itp = geometry.as_matrix_stack(image_to_probe, "image_to_probe")
    height, width = frame_size
    centre, wire_dir, lateral, depth = _phantom_frame(phantom)
    # probe-frame unit axes of the image columns and rows (orthonormalised: the calibration may skew)
    col = itp[:3, 0] / np.linalg.norm(itp[:3, 0])
    row = itp[:3, 1] - (itp[:3, 1] @ col) * col
    row /= np.linalg.norm(row)
    probe_axes = np.stack([col, row, np.cross(col, row)], axis=1)
    phantom_axes = np.stack([lateral, depth, np.cross(lateral, depth)], axis=1)
    rotation = phantom_axes @ probe_axes.T
    # put the middle of the frame (laterally) and ~45 % of the depth on the pattern centre
    anchor_px = np.array([(width - 1) / 2.0, 0.45 * (height - 1), 0.0])
    anchor_probe = geometry.apply(itp, anchor_px)
    nominal = geometry.rigid(rotation, centre - rotation @ anchor_probe)

    fronts, backs = _wire_arrays(phantom)
    wire_len = float(np.mean(np.linalg.norm(backs - fronts, axis=1)))
    signals = np.stack([_smooth_random(rng, n_frames) for _ in range(6)], axis=1)
    # a frame-to-frame tremor on top of the smooth motion, as a hand holds a probe
    signals += 0.05 * rng.standard_normal(signals.shape)
    amplitude = np.array(
        [np.radians(tilt_deg), np.radians(yaw_deg), np.radians(in_plane_deg), slide_fraction * wire_len,
         shift_mm[0], shift_mm[1]]
    )

    def pose_for(params: np.ndarray) -> np.ndarray:
        tilt, yaw, spin, slide, lat, ax = params
        # rotations about the pattern centre, in phantom axes tied to the image
        rot = (
            Rotation.from_rotvec(lateral * tilt) * Rotation.from_rotvec(depth * yaw)
            * Rotation.from_rotvec(wire_dir * spin)
        ).as_matrix()
        about_centre = geometry.compose(
            geometry.translation(centre), geometry.rigid(rot), geometry.translation(-centre)
        )
        shift = geometry.translation(wire_dir * slide + lateral * lat + depth * ax)
        return geometry.compose(shift, about_centre, nominal)

    def fits(pose: np.ndarray) -> bool:
        pixels, fractions, _ = wire_intersections(phantom, geometry.compose(pose, itp))
        if not np.isfinite(pixels).all():
            return False
        inside = (
            (pixels[:, 0] >= margin_px) & (pixels[:, 0] <= width - 1 - margin_px)
            & (pixels[:, 1] >= margin_px) & (pixels[:, 1] <= height - 1 - margin_px)
        )
        return bool(inside.all() and (fractions > 0.03).all() and (fractions < 0.97).all())

    if not fits(nominal):
        raise ValueError(
            f"a {width}x{height} frame with this ImageToProbe cannot show every wire of {phantom.name!r}; "
            "use a larger frame or a coarser spacing"
        )
    poses = np.empty((n_frames, 4, 4))
    for i in range(n_frames):
        params = signals[i] * amplitude
        for shrink in (1.0, 0.8, 0.6, 0.4, 0.2, 0.0):
            pose = pose_for(params * shrink)
            if fits(pose):
                break
        poses[i] = pose
    return poses


def _random_rigid_perturbation(rng: np.random.Generator, deg_range, mm_range) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(*deg_range))
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    return geometry.rigid(Rotation.from_rotvec(axis * angle), direction * rng.uniform(*mm_range))


def _reference_to_tracker_poses(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """The reference marker seen by the tracker: a fixed placement plus sub-mm wobble (the table and
    the tracker are never perfectly still)."""
    base_rot = Rotation.from_euler("xyz", rng.uniform(-180, 180, 3), degrees=True)
    base = geometry.rigid(base_rot, rng.uniform([-50, -50, -300], [50, 50, -150]))
    wobble = np.stack([_smooth_random(rng, n_frames) for _ in range(6)], axis=1)
    params = wobble * np.array([0.3, 0.3, 0.3, 0.1, 0.1, 0.1])
    return geometry.compose(base, geometry.params_to_matrix(params, "xyz", degrees=True))


# ---------------------------------------------------------------------------- rendering


def _blob_template(sigma_lat: float, sigma_ax: float, reverb_px: float) -> tuple:
    half_w = int(np.ceil(4.0 * sigma_lat)) + 1
    up = int(np.ceil(4.0 * sigma_ax)) + 1
    down = int(np.ceil(4.0 * sigma_ax + 2.2 * reverb_px)) + 1
    return half_w, up, down


def _render_wire_echo(
    canvas: np.ndarray,
    x: float,
    y: float,
    amplitude: float,
    sigma_lat: float,
    sigma_ax: float,
    reverb_px: float,
    reverb_gain: tuple[float, float],
    texture: np.ndarray,
    texture_strength: float,
) -> None:
    """Add one wire echo centred exactly at subpixel (x, y) to ``canvas`` (in place).

    The main lobe is symmetric about (x, y) in both axes, so its peak is the ground truth; its
    lateral width shrinks below the centre and grows above, which gives the flat-topped, downward
    pointing shape of real wire echoes. Two weaker, narrower copies below it are the reverberations
    inside the wire.
    """
    height, width = canvas.shape
    half_w, up, down = _blob_template(sigma_lat, sigma_ax, reverb_px)
    x0, x1 = max(int(np.floor(x)) - half_w, 0), min(int(np.floor(x)) + half_w + 1, width)
    y0, y1 = max(int(np.floor(y)) - up, 0), min(int(np.floor(y)) + down + 1, height)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1, dtype=np.float32) - np.float32(x))[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) - np.float32(y))[:, None]
    # the lateral width shrinks with depth through the echo (the flat top, pointed bottom); the
    # peak of every row stays at dx = 0 and its height exp(-dy^2/2) does not depend on the width,
    # so the brightest pixel is still the true centre
    lat = np.float32(sigma_lat) * (1.0 - np.float32(0.3) * np.tanh(dy / np.float32(2.0 * sigma_ax)))
    main = np.exp(-0.5 * (dx / lat) ** 2 - 0.5 * (dy / np.float32(sigma_ax)) ** 2)
    for k, gain in enumerate(reverb_gain, start=1):
        if gain <= 0:
            continue
        ry = dy - np.float32(k * reverb_px)
        main = main + np.float32(gain) * np.exp(
            -0.5 * (dx / np.float32(1.1 * sigma_lat)) ** 2 - 0.5 * (ry / np.float32(1.2 * sigma_ax)) ** 2
        )
    tex = texture[y0:y1, x0:x1]
    # modulate the echo by the local speckle, but never at its centre, where it would move the peak
    weight = np.float32(texture_strength) * (1.0 - np.exp(-0.5 * (dx / lat) ** 2 - 0.5 * (dy / np.float32(sigma_ax)) ** 2))
    canvas[y0:y1, x0:x1] += np.float32(amplitude) * main * (1.0 + weight * (tex - 1.0))


def _segment_clear_of(points: np.ndarray, p0: np.ndarray, p1: np.ndarray, clearance: float) -> bool:
    if len(points) == 0:
        return True
    d = p1 - p0
    t = np.clip(((points - p0) @ d) / max(d @ d, 1e-12), 0.0, 1.0)
    closest = p0 + t[:, None] * d
    return bool((np.linalg.norm(points - closest, axis=1) > clearance).all())


def _clip_line_to_frame(p: np.ndarray, direction: np.ndarray, width: int, height: int):
    """The part of the infinite line p + s * direction inside the frame, or None."""
    s_lo, s_hi = -np.inf, np.inf
    for axis, size in ((0, width - 1), (1, height - 1)):
        if abs(direction[axis]) < 1e-12:
            if not (0 <= p[axis] <= size):
                return None
            continue
        a = (0 - p[axis]) / direction[axis]
        b = (size - p[axis]) / direction[axis]
        s_lo, s_hi = max(s_lo, min(a, b)), min(s_hi, max(a, b))
    if s_lo >= s_hi:
        return None
    return p + s_lo * direction, p + s_hi * direction


def _plate_line(phantom_frame, image_to_phantom: np.ndarray, offset_mm: float):
    """Where the phantom's bottom plate (a plane parallel to the wire layers, ``offset_mm`` below the
    centre) crosses the image plane, as a pixel point and direction, or None."""
    centre, wire_dir, lateral, depth = phantom_frame
    plane_point = centre + depth * offset_mm
    origin, col, row = image_to_phantom[:3, 3], image_to_phantom[:3, 0], image_to_phantom[:3, 1]
    # depth . (origin + x col + y row - plane_point) = 0
    a, b, c = depth @ col, depth @ row, depth @ (origin - plane_point)
    if abs(b) < 1e-12:
        return None
    p = np.array([0.0, -c / b])
    direction = np.array([1.0, -a / b])
    return p, direction / np.linalg.norm(direction)


def _draw_walls(
    shape: tuple[int, int],
    segments: list[tuple[np.ndarray, np.ndarray, float]],
    texture: np.ndarray,
    dash_field: np.ndarray,
    sigma_lat: float,
    sigma_ax: float,
) -> np.ndarray:
    """Long thin specular echoes (phantom walls, membranes): antialiased lines, broken up by the
    speckle texture and blurred by the point-spread function."""
    height, width = shape
    canvas = np.zeros((height, width), np.uint8)
    amplitude_scale = 255.0
    for p0, p1, amp in segments:
        level = int(np.clip(round(amp * amplitude_scale / 2.0), 1, 127))
        cv2.line(
            canvas,
            (int(round(p0[0] * 16)), int(round(p0[1] * 16))),
            (int(round(p1[0] * 16)), int(round(p1[1] * 16))),
            level,
            thickness=2,
            lineType=cv2.LINE_AA,
            shift=4,
        )
    walls = canvas.astype(np.float32) * np.float32(2.0 / amplitude_scale)
    # specular echoes are intermittent along their length (dashes of a few mm) and speckled
    dashes = cv2.resize(dash_field, (width, height), interpolation=cv2.INTER_LINEAR)
    walls *= np.maximum(dashes, 0.0) * np.sqrt(np.minimum(texture, 3.0))
    return cv2.GaussianBlur(walls, (0, 0), sigmaX=max(sigma_lat * 0.7, 0.5), sigmaY=max(sigma_ax, 0.5))


def simulate_nwire(
    phantom: NWirePhantom,
    image_to_probe=None,
    probe_poses=None,
    n_frames: int = 100,
    frame_size: tuple[int, int] = (616, 820),
    spacing: tuple[float, float] | None = None,
    noise: str | float = "low",
    wall_echoes: bool = True,
    corrupt_pose_fraction: float = 0.0,
    missing_phantom_frames: int | float = 0,
    phantom_to_reference=None,
    wire_diameter_mm: float = 0.6,
    frame_interval_s: float = 0.08,
    seed: int = 0,
    progress=None,
) -> tuple[Sweep, dict]:
    """Simulate a tracked N-wire calibration recording with exact ground truth.

    Parameters
    ----------
    phantom : N-wire phantom (e.g. ``freehand3d.phantoms.load_phantom("fcal-1.2")``).
    image_to_probe : (4, 4) true calibration, pixels -> probe mm. Default: PLUS's fCal 1.2 result
        (:data:`PLUS_FCAL_IMAGE_TO_PROBE`), rescaled to ``spacing`` when that is given.
    probe_poses : (N, 4, 4) rigid ProbeToPhantom poses, optional. Default: freehand-like poses from
        :func:`nwire_probe_poses` that show every wire.
    n_frames : number of frames when ``probe_poses`` is None.
    frame_size : (H, W) pixels; default (616, 820) like the PLUS fCal recordings.
    spacing : (sx, sy) mm/px, only used to rescale the default ``image_to_probe``.
    noise : ``"low"`` (water bath, like PLUS's recordings), ``"medium"``, ``"high"`` or a number
        (0 = low, 0.5 = medium, 1 = high; larger is harder still).
    wall_echoes : add long thin echoes of the phantom's bottom plate and of random membranes, never
        closer than 1.5 mm to a wire echo.
    corrupt_pose_fraction : fraction of frames whose reported ProbeToTracker is wrong by 3-15 deg and
        5-20 mm while its status still says OK.
    missing_phantom_frames : frames (a count, or a fraction when < 1) where the probe is off the
        phantom, so no wire crosses the image.
    phantom_to_reference : (4, 4) phantom registration; default the phantom's own, else PLUS's fCal
        device-set value.
    wire_diameter_mm : sets the spacing of the reverberation echoes below each wire.
    frame_interval_s : time between frames.
    seed : everything random derives from it; the same seed gives the same bytes.
    progress : optional callable ``progress(done, total)`` called as frames are rendered.

    Returns
    -------
    sweep : :class:`~freehand3d.sweep.Sweep` with uint8 frames, ``ProbeToTracker`` and
        ``ReferenceToTracker`` per frame, ``image_to_probe`` (the truth) and ``spacing``;
        ``metadata["PhantomToReferenceTransform"]`` holds the phantom registration as 16 numbers.
    truth : dict of arrays —
        ``wire_pixels`` (N, K, 2) exact subpixel (x = column, y = row) of each of the K wires,
        NaN where the wire does not cross the image; ``wire_points`` (N, K, 3) the same points in
        phantom mm; ``wire_fractions`` (N, K) position along each wire; ``wire_visible`` (N, K);
        ``wire_names`` (K,); ``has_phantom`` (N,); ``corrupted`` (N,); ``image_to_probe``;
        ``phantom_to_reference``; ``probe_to_phantom``, ``image_to_phantom``, ``probe_to_tracker``
        (true), ``reported_probe_to_tracker``, ``reference_to_tracker`` (N, 4, 4); ``spacing``;
        ``noise_level``; ``seed``.

    Examples
    --------
    >>> from freehand3d.phantoms import load_phantom
    >>> sweep, truth = simulate_nwire(load_phantom("fcal-1.2"), n_frames=2)
    >>> sweep.frames.shape, truth["wire_pixels"].shape
    ((2, 616, 820), (2, 9, 2))
    """
    settings = NoiseSettings.from_level(noise)
    if not 0.0 <= corrupt_pose_fraction <= 1.0:
        raise ValueError(f"corrupt_pose_fraction must be in [0, 1], got {corrupt_pose_fraction}")
    height, width = (int(v) for v in frame_size)
    if height < 16 or width < 16:
        raise ValueError(f"frame_size must be at least 16 x 16, got {frame_size}")
    rng = np.random.default_rng(seed)
    itp = default_image_to_probe(spacing) if image_to_probe is None else geometry.as_matrix_stack(image_to_probe)
    if itp.shape != (4, 4):
        raise ValueError("image_to_probe must be one 4x4 matrix")
    pixel_mm = np.linalg.norm(itp[:3, :2], axis=0)  # (sx, sy)
    if phantom_to_reference is None:
        phantom_to_reference = (
            phantom.phantom_to_reference if phantom.phantom_to_reference is not None else PLUS_FCAL_PHANTOM_TO_REFERENCE
        )
    ptr = geometry.as_matrix_stack(phantom_to_reference, "phantom_to_reference")

    pose_rng, frame_rng, tracker_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, 3))
    if probe_poses is None:
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        probe_to_phantom = nwire_probe_poses(phantom, itp, n_frames, (height, width), seed=pose_rng)
    else:
        probe_to_phantom = geometry.as_matrix_stack(probe_poses, "probe_poses").reshape(-1, 4, 4).copy()
        if not np.all(geometry.is_rigid(probe_to_phantom, atol=1e-6)):
            raise ValueError("probe_poses must be rigid ProbeToPhantom transforms")
    n = len(probe_to_phantom)

    # frames where the probe has been lifted off the phantom: slide it well past the wire ends
    n_missing = int(round(missing_phantom_frames * n)) if 0 < missing_phantom_frames < 1 else int(missing_phantom_frames)
    if not 0 <= n_missing <= n:
        raise ValueError(f"missing_phantom_frames must be between 0 and {n}, got {missing_phantom_frames}")
    missing = np.zeros(n, bool)
    missing[pose_rng.choice(n, n_missing, replace=False)] = True
    phantom_axes = _phantom_frame(phantom)
    fronts, backs = _wire_arrays(phantom)
    wire_len = float(np.max(np.linalg.norm(backs - fronts, axis=1)))
    for i in np.flatnonzero(missing):
        side = pose_rng.choice([-1.0, 1.0])
        away = geometry.translation(phantom_axes[1] * side * wire_len * pose_rng.uniform(1.2, 2.0))
        probe_to_phantom[i] = geometry.compose(away, probe_to_phantom[i])

    image_to_phantom = geometry.compose(probe_to_phantom, itp)
    pixels, fractions, points = wire_intersections(phantom, image_to_phantom)
    inside = (
        (pixels[..., 0] >= 0) & (pixels[..., 0] <= width - 1) & (pixels[..., 1] >= 0) & (pixels[..., 1] <= height - 1)
    )
    visible = np.isfinite(pixels).all(axis=-1) & inside & (fractions >= 0) & (fractions <= 1)
    has_phantom = visible.any(axis=1)
    pixels = np.where(visible[..., None], pixels, np.nan)
    points = np.where(visible[..., None], points, np.nan)

    reference_to_tracker = _reference_to_tracker_poses(tracker_rng, n)
    probe_to_tracker = geometry.compose(reference_to_tracker, ptr, probe_to_phantom)
    reported = probe_to_tracker.copy()
    n_corrupt = int(round(corrupt_pose_fraction * n))
    corrupted = np.zeros(n, bool)
    corrupted[tracker_rng.choice(n, n_corrupt, replace=False)] = True
    for i in np.flatnonzero(corrupted):
        reported[i] = geometry.compose(reported[i], _random_rigid_perturbation(tracker_rng, (3, 15), (5, 20)))

    frames = _render_nwire_frames(
        pixels, visible, image_to_phantom, phantom_axes, has_phantom, (height, width), pixel_mm,
        settings, wall_echoes, wire_diameter_mm, frame_rng, progress,
    )

    sweep = Sweep(
        frames=frames,
        spacing=(float(pixel_mm[0]), float(pixel_mm[1])),
        timestamps=np.arange(n) * float(frame_interval_s),
        transforms={"ProbeToTracker": reported, "ReferenceToTracker": reference_to_tracker},
        image_to_probe=itp,
        frame_fields={"ImageStatus": ["OK"] * n},
        metadata={
            "UltrasoundImageOrientation": "MF",
            "PhantomToReferenceTransform": " ".join(f"{v:.17g}" for v in ptr.ravel()),
            "SimulatedBy": f"freehand3d.simulate.simulate_nwire seed={seed} noise={settings.level:g}",
        },
    )
    truth = {
        "wire_pixels": pixels,
        "wire_points": points,
        "wire_fractions": fractions,
        "wire_visible": visible,
        "wire_names": np.array([w.name for w in phantom.wires]),
        "has_phantom": has_phantom,
        "corrupted": corrupted,
        "image_to_probe": itp,
        "phantom_to_reference": ptr,
        "probe_to_phantom": probe_to_phantom,
        "image_to_phantom": image_to_phantom,
        "probe_to_tracker": probe_to_tracker,
        "reported_probe_to_tracker": reported,
        "reference_to_tracker": reference_to_tracker,
        "spacing": pixel_mm.copy(),
        "noise_level": np.float64(settings.level),
        "seed": np.int64(seed),
    }
    return sweep, truth


def _render_nwire_frames(
    pixels, visible, image_to_phantom, phantom_axes, has_phantom, shape, pixel_mm, settings, wall_echoes,
    wire_diameter_mm, rng, progress=None,
) -> np.ndarray:
    height, width = shape
    sx, sy = float(pixel_mm[0]), float(pixel_mm[1])
    # point-spread function of a ~10 MHz linear array (~0.55 mm lateral, ~0.3 mm axial FWHM); after
    # 40 dB log compression a wire echo is ~1 mm wide and ~0.6 mm high at half its grey level, as
    # measured on the wires of PLUS's fCal recording (13 x 8 px median at 0.078 x 0.074 mm/px)
    sigma_lat, sigma_ax = 0.24 / sx, 0.14 / sy
    reverb_px = 1.3 * wire_diameter_mm / sy
    grain = (0.26 / sx, 0.12 / sy)
    gain = _speckle.depth_gain(height, height * sy, attenuation_db_per_mm=0.5, tgc_compensation=0.85)
    # receiver noise is amplified by the TGC, so it grows with depth
    noise_gain = (1.0 / gain) ** 0.5
    truth_points = [pixels[i][visible[i]] for i in range(len(pixels))]
    frames = np.empty((len(pixels), height, width), np.uint8)
    for i in range(len(pixels)):
        # tissue-like slow variation of the background echogenicity
        modulation = 1.0 + 0.3 * rng.uniform(-1, 1, (4, 5))
        speckle = _speckle.rayleigh_speckle((height, width), grain, rng, modulation=modulation)
        envelope = speckle * np.float32(settings.background)
        for x, y in truth_points[i]:
            amp = 1.0 - settings.wire_amplitude_spread * rng.uniform(0.0, 1.0)
            # reverberations inside the wire: 25-35 dB below the echo, faint tails as in real frames
            reverbs = (rng.uniform(0.02, 0.06), rng.uniform(0.005, 0.02))
            _render_wire_echo(envelope, x, y, amp, sigma_lat * rng.uniform(0.9, 1.15), sigma_ax, reverb_px,
                              reverbs, speckle, settings.blob_texture)
        if wall_echoes:
            segments = _wall_segments(i, rng, image_to_phantom[i], phantom_axes, has_phantom[i], truth_points[i],
                                      (height, width), settings, 1.5 / min(sx, sy))
            if segments:
                dash_field = rng.uniform(-0.6, 1.4, (max(2, height // 16), max(2, width // 16))).astype(np.float32)
                envelope += _draw_walls((height, width), segments, speckle, dash_field, sigma_lat, sigma_ax)
        envelope *= gain
        envelope += _speckle.electronic_noise((height, width), settings.receiver_noise, rng) * noise_gain
        frames[i] = _speckle.log_compress(envelope, settings.dynamic_range_db, reference=1.0)
        if progress is not None and (i % 10 == 9 or i == len(pixels) - 1):
            progress(i + 1, len(pixels))
    return frames


def _wall_segments(i, rng, image_to_phantom, phantom_axes, on_phantom, points, shape, settings, clearance_px):
    height, width = shape
    segments = []
    if on_phantom:
        # the bottom plate of the phantom, ~10 mm below the centre of the wire pattern
        line = _plate_line(phantom_axes, image_to_phantom, offset_mm=rng.uniform(9.0, 11.0))
        if line is not None:
            clipped = _clip_line_to_frame(line[0], line[1], width, height)
            if clipped is not None:
                p0, p1 = clipped
                length = np.linalg.norm(p1 - p0)
                # only part of the plate reflects back towards the probe
                a, b = sorted(rng.uniform(0.05, 0.95, 2))
                if (b - a) * length > 40 and _segment_clear_of(points, p0 + a * (p1 - p0), p0 + b * (p1 - p0), clearance_px):
                    segments.append((p0 + a * (p1 - p0), p0 + b * (p1 - p0), rng.uniform(0.02, 0.4)))
    lo, hi = settings.n_random_walls
    for _ in range(int(rng.integers(lo, hi + 1))):
        for _attempt in range(10):
            centre = rng.uniform([0.05 * width, 0.1 * height], [0.95 * width, 0.95 * height])
            # membranes near-perpendicular to the beam reflect most; steep ones are rarer
            angle = rng.normal(0.0, 25.0) if rng.uniform() < 0.7 else rng.uniform(-80, 80)
            length = rng.uniform(0.15, 0.6) * width
            d = np.array([np.cos(np.radians(angle)), np.sin(np.radians(angle))]) * length / 2
            p0, p1 = centre - d, centre + d
            if _segment_clear_of(points, p0, p1, clearance_px):
                segments.append((p0, p1, rng.uniform(0.02, 0.3)))
                break
    return segments
