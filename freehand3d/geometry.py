"""Rigid and affine 4x4 transforms, 6-DoF parameters, pose interpolation and named frames.

Conventions (see the project DESIGN): a transform named ``AToB`` maps coordinates in frame A to
frame B; matrices are 4x4 for column vectors, composed right to left::

    image_to_reference = invert(reference_to_tracker) @ probe_to_tracker @ image_to_probe

Every function accepts a single (4, 4) matrix or a stack (..., 4, 4) and returns the same shape.
Angles are in radians unless a ``degrees`` argument says otherwise.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Iterable, Mapping

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

#: Every Euler convention accepted by :func:`params_to_matrix`: scipy's lower-case sequences are
#: extrinsic (rotations about the fixed axes), upper-case ones intrinsic (about the moving axes).
EULER_CONVENTIONS = tuple(
    s
    for axes in ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "xyx", "xzx", "yxy", "yzy", "zxz", "zyz")
    for s in (axes, axes.upper())
)


def as_matrix_stack(transforms, name: str = "transform") -> np.ndarray:
    """Return ``transforms`` as a float64 array of shape (..., 4, 4); raise ValueError otherwise."""
    arr = np.asarray(transforms, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape (..., 4, 4), got {arr.shape}")
    return arr


def rigid(rotation=None, translation=None) -> np.ndarray:
    """Build 4x4 matrices from a rotation (3x3 array(s) or a scipy ``Rotation``) and a translation.

    Examples
    --------
    >>> rigid(translation=[1, 2, 3])[:3, 3]
    array([1., 2., 3.])
    """
    if isinstance(rotation, Rotation):
        rotation = rotation.as_matrix()
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    trans = np.zeros(3) if translation is None else np.asarray(translation, dtype=np.float64)
    batch = np.broadcast_shapes(rot.shape[:-2], trans.shape[:-1])
    out = np.zeros(batch + (4, 4))
    out[..., :3, :3] = rot
    out[..., :3, 3] = trans
    out[..., 3, 3] = 1.0
    return out


def translation(offset) -> np.ndarray:
    """4x4 translation by ``offset`` (3,) or (..., 3)."""
    return rigid(translation=offset)


def scaling(factors) -> np.ndarray:
    """4x4 diagonal scaling by ``factors`` (3,) — e.g. pixel spacing (sx, sy, 1)."""
    f = np.asarray(factors, dtype=np.float64)
    out = np.zeros(f.shape[:-1] + (4, 4))
    out[..., 0, 0], out[..., 1, 1], out[..., 2, 2] = f[..., 0], f[..., 1], f[..., 2]
    out[..., 3, 3] = 1.0
    return out


def invert(transforms) -> np.ndarray:
    """Inverse of affine 4x4 matrices (exact block inverse, not a generic 4x4 inversion)."""
    t = as_matrix_stack(transforms)
    lin_inv = np.linalg.inv(t[..., :3, :3])
    out = np.zeros_like(t)
    out[..., :3, :3] = lin_inv
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", lin_inv, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(transforms) -> np.ndarray:
    """Inverse of rigid 4x4 matrices using the transpose of the rotation (faster, exact for rigid)."""
    t = as_matrix_stack(transforms)
    rot_t = np.swapaxes(t[..., :3, :3], -1, -2)
    out = np.zeros_like(t)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, t[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def compose(*transforms) -> np.ndarray:
    """Matrix product right to left: ``compose(A_to_B, X_to_A)`` maps X to B. Stacks broadcast."""
    if not transforms:
        raise ValueError("compose needs at least one transform")
    out = as_matrix_stack(transforms[0])
    for t in transforms[1:]:
        out = out @ as_matrix_stack(t)
    return out


def apply(transforms, points) -> np.ndarray:
    """Map points (..., 3) (or (..., 2): z = 0 is assumed) through 4x4 transform(s)."""
    t = as_matrix_stack(transforms)
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] == 2:
        p = np.concatenate([p, np.zeros(p.shape[:-1] + (1,))], axis=-1)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have 2 or 3 coordinates in the last axis, got {p.shape}")
    return np.einsum("...ij,...j->...i", t[..., :3, :3], p) + t[..., :3, 3]


def is_rigid(transforms, atol: float = 1e-6) -> np.ndarray | bool:
    """True where the 3x3 block is a proper rotation and the last row is (0, 0, 0, 1)."""
    t = as_matrix_stack(transforms)
    rot = t[..., :3, :3]
    ortho = np.abs(np.swapaxes(rot, -1, -2) @ rot - np.eye(3)).max(axis=(-1, -2)) <= atol
    det = np.abs(np.linalg.det(rot) - 1.0) <= atol
    last = np.abs(t[..., 3, :] - [0, 0, 0, 1]).max(axis=-1) <= atol
    res = ortho & det & last
    return bool(res) if res.ndim == 0 else res


def orthonormalize(transforms) -> np.ndarray:
    """Nearest rigid transform (polar decomposition of the 3x3 block; translation kept)."""
    t = as_matrix_stack(transforms).copy()
    u, _, vt = np.linalg.svd(t[..., :3, :3])
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    t[..., :3, :3] = u @ vt
    t[..., 3, :] = [0, 0, 0, 1]
    return t


def _check_convention(convention: str) -> str:
    if convention not in EULER_CONVENTIONS:
        raise ValueError(
            f"unknown Euler convention {convention!r}; use one of scipy's sequences, e.g. 'xyz' "
            "(extrinsic, lower case) or 'XYZ' (intrinsic, upper case)"
        )
    return convention


def params_to_matrix(params, convention: str, degrees: bool = False) -> np.ndarray:
    """6-DoF parameters ``[tx, ty, tz, a1, a2, a3]`` (..., 6) -> 4x4 matrices (..., 4, 4).

    ``convention`` is a scipy Euler sequence and must be given explicitly: DualTrack and TUS-REC use
    ``"xyz"`` (extrinsic x then y then z, i.e. R = Rz Ry Rx) with degrees and mm.
    """
    _check_convention(convention)
    p = np.asarray(params, dtype=np.float64)
    if p.shape[-1] != 6:
        raise ValueError(f"6-DoF parameters need 6 values in the last axis, got shape {p.shape}")
    flat = p.reshape(-1, 6)
    rot = Rotation.from_euler(convention, flat[:, 3:], degrees=degrees).as_matrix()
    return rigid(rot, flat[:, :3]).reshape(p.shape[:-1] + (4, 4))


def matrix_to_params(transforms, convention: str, degrees: bool = False) -> np.ndarray:
    """Inverse of :func:`params_to_matrix` for rigid matrices (..., 4, 4) -> (..., 6)."""
    _check_convention(convention)
    t = as_matrix_stack(transforms)
    flat = t.reshape(-1, 4, 4)
    import warnings

    with warnings.catch_warnings():
        # scipy warns about gimbal lock; the returned angles are still a valid representation
        warnings.simplefilter("ignore", UserWarning)
        angles = Rotation.from_matrix(flat[:, :3, :3]).as_euler(convention, degrees=degrees)
    return np.concatenate([flat[:, :3, 3], angles], axis=1).reshape(t.shape[:-2] + (6,))


def interpolate_poses(times, poses, query_times, valid=None, extrapolate: bool = False):
    """Interpolate rigid poses in time: SLERP for the rotation, linear for the translation.

    Parameters
    ----------
    times : (N,) increasing sample times of ``poses`` (e.g. tracker timestamps, seconds).
    poses : (N, 4, 4) rigid transforms.
    query_times : (M,) times to interpolate at (e.g. video frame timestamps).
    valid : (N,) bool, optional. Invalid samples are ignored.
    extrapolate : if False, queries outside the valid sample range are marked invalid (and hold the
        nearest end pose); if True, the end pose is held and marked valid.

    Returns
    -------
    poses : (M, 4, 4), valid : (M,) bool.
    """
    times = np.asarray(times, dtype=np.float64)
    poses = as_matrix_stack(poses, "poses")
    query = np.atleast_1d(np.asarray(query_times, dtype=np.float64))
    keep = np.ones(len(times), bool) if valid is None else np.asarray(valid, bool).copy()
    keep &= np.isfinite(poses).all(axis=(1, 2)) & np.isfinite(times)
    t, p = times[keep], poses[keep]
    out = np.tile(np.eye(4), (len(query), 1, 1))
    ok = np.zeros(len(query), bool)
    if len(t) == 0:
        return out, ok
    if np.any(np.diff(t) <= 0):
        raise ValueError("pose times must be strictly increasing")
    if len(t) == 1:
        out[:] = p[0]
        ok[:] = np.isfinite(query) & (extrapolate | (query == t[0]))
        return out, ok
    known = np.isfinite(query)  # a frame without a timestamp cannot be matched to a pose
    inside = known & (query >= t[0]) & (query <= t[-1])
    qc = np.clip(np.where(known, query, t[0]), t[0], t[-1])
    slerp = Slerp(t, Rotation.from_matrix(p[:, :3, :3]))
    out[:, :3, :3] = slerp(qc).as_matrix()
    for axis in range(3):
        out[:, axis, 3] = np.interp(qc, t, p[:, axis, 3])
    ok = inside | (known & extrapolate)
    return out, ok


# ---------------------------------------------------------------------------- named frames

_NAME = re.compile(r"^([A-Za-z0-9]+?)To([A-Z][A-Za-z0-9]*)$")


def split_transform_name(name: str) -> tuple[str, str]:
    """``"ProbeToTracker"`` -> ``("Probe", "Tracker")``; also accepts a trailing ``Transform``."""
    base = name[: -len("Transform")] if name.endswith("Transform") else name
    m = _NAME.match(base)
    if not m:
        raise ValueError(f"{name!r} is not a transform name of the form <From>To<To>")
    return m.group(1), m.group(2)


class FrameGraph:
    """Named coordinate frames linked by transforms (PLUS's transform repository, in numpy).

    Add ``AToB`` transforms (single 4x4 or (N, 4, 4) stacks); ask for any ``XToY`` connected through
    them. Missing links raise KeyError naming what is available.

    >>> g = FrameGraph({"ProbeToTracker": np.eye(4), "ImageToProbe": np.eye(4)})
    >>> g.get("ImageToTracker").shape
    (4, 4)
    """

    def __init__(self, transforms: Mapping[str, np.ndarray] | None = None):
        self._edges: dict[tuple[str, str], np.ndarray] = {}
        for name, t in (transforms or {}).items():
            self.add(name, t)

    def add(self, name: str, transform) -> None:
        src, dst = split_transform_name(name)
        self._edges[(src, dst)] = as_matrix_stack(transform, name)

    @property
    def frames(self) -> set[str]:
        return {f for edge in self._edges for f in edge}

    def names(self) -> list[str]:
        return [f"{a}To{b}" for a, b in self._edges]

    def _path(self, src: str, dst: str) -> list[tuple[str, str, bool]]:
        # breadth-first search; each step is (from, to, inverted)
        nbrs: dict[str, list[tuple[str, tuple[str, str], bool]]] = {}
        for a, b in self._edges:
            nbrs.setdefault(a, []).append((b, (a, b), False))
            nbrs.setdefault(b, []).append((a, (a, b), True))
        prev: dict[str, tuple[str, tuple[str, str], bool] | None] = {src: None}
        queue = deque([src])
        while queue:
            node = queue.popleft()
            if node == dst:
                break
            for nxt, edge, inv in nbrs.get(node, []):
                if nxt not in prev:
                    prev[nxt] = (node, edge, inv)
                    queue.append(nxt)
        if dst not in prev:
            raise KeyError(
                f"cannot compute {src}To{dst}: no chain of transforms links {src} and {dst} "
                f"(available: {', '.join(self.names()) or 'none'})"
            )
        steps = []
        node = dst
        while prev[node] is not None:
            parent, edge, inv = prev[node]
            steps.append((edge[0], edge[1], inv))
            node = parent
        return steps[::-1]

    def path_names(self, name: str) -> list[str]:
        """Names of the stored transforms that :meth:`get` chains to compute ``name``."""
        src, dst = split_transform_name(name)
        return [] if src == dst else [f"{a}To{b}" for a, b, _ in self._path(src, dst)]

    def get(self, name: str) -> np.ndarray:
        """Transform ``XToY`` composed from the stored links (inverting links as needed)."""
        src, dst = split_transform_name(name)
        result = None
        if src == dst:
            return np.eye(4)
        for a, b, inv in self._path(src, dst):
            t = self._edges[(a, b)]
            step = invert(t) if inv else t
            result = step if result is None else compose(step, result)
        return result


def image_to_reference(
    probe_to_tracker, reference_to_tracker, image_to_probe
) -> np.ndarray:
    """``ImageToReference = ReferenceToTracker^-1 · ProbeToTracker · ImageToProbe`` (stacks broadcast)."""
    return compose(invert(reference_to_tracker), probe_to_tracker, image_to_probe)


def pixel_grid(height: int, width: int, step: int = 1) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) of a frame as (K, 2), row-major."""
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)


def frame_corners(height: int, width: int) -> np.ndarray:
    """The four corner pixel centres (x, y) of an H x W frame, clockwise from the top-left."""
    return np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)


def rotation_angle_deg(transforms) -> np.ndarray:
    """Rotation angle (degrees) of the 3x3 block of rigid transforms."""
    t = as_matrix_stack(transforms)
    cos = (np.trace(t[..., :3, :3], axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def stack(transforms: Iterable) -> np.ndarray:
    """Stack a sequence of 4x4 matrices into (N, 4, 4) float64."""
    return as_matrix_stack(np.stack([np.asarray(t, dtype=np.float64) for t in transforms]))
