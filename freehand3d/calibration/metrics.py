"""Stage 5 of N-wire calibration: accuracy and reproducibility measures.

* PRE3D (PLUS "3D reprojection error", the point reconstruction error at the diagonal wires): the
  distance between a diagonal-wire dot mapped by ImageToProbe and its similar-triangles position in
  the probe frame; PLUS reports mean and standard deviation over the best 95 % (:func:`best_fraction_stats`).
* 2D in-plane error per wire (PLUS "2D reprojection error"): the segmented dot minus the pixel where
  the wire crosses the image plane under the calibration.
* CRE (calibration reproducibility): calibrations from disjoint subsets of frames map the image
  corners; CRE is the mean distance of each mapped corner from the mean of its mappings.
* Calibration error against a known truth: mean distance of the four image corners and the centre
  mapped by the estimated and by the true ImageToProbe.
"""

from __future__ import annotations

import numpy as np

from freehand3d import geometry
from freehand3d.phantoms import NWirePhantom


def pre3d_errors(image_to_probe: np.ndarray, pixels: np.ndarray, probe_points: np.ndarray) -> np.ndarray:
    """(M,) distances (mm) between ``ImageToProbe · pixels`` and ``probe_points``."""
    return np.linalg.norm(geometry.apply(image_to_probe, np.asarray(pixels, float)) - probe_points, axis=-1)


def best_fraction_stats(errors, fraction: float = 0.95) -> tuple[float, float]:
    """Mean and (population) standard deviation of the smallest ``round(fraction * n)`` errors, as
    PLUS reports them."""
    e = np.sort(np.asarray(errors, float).ravel())
    e = e[np.isfinite(e)]
    if e.size == 0:
        return float("nan"), float("nan")
    keep = max(int(np.floor(e.size * fraction + 0.5)), 1)
    e = e[:keep]
    return float(e.mean()), float(e.std())


def wire_crossings(image_to_phantom: np.ndarray, phantom: NWirePhantom) -> np.ndarray:
    """Pixels (N, K, 2) where each of the K wires crosses the image plane of each of N frames
    (NaN where a wire is parallel to the plane)."""
    itp = np.asarray(image_to_phantom, float).reshape(-1, 4, 4)
    phantom_to_image = geometry.invert(itp)
    fronts = np.array([w.front for w in phantom.wires])
    backs = np.array([w.back for w in phantom.wires])
    a = geometry.apply(phantom_to_image[:, None], fronts[None])
    b = geometry.apply(phantom_to_image[:, None], backs[None])
    dz = b[..., 2] - a[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(np.abs(dz) > 1e-12, -a[..., 2] / dz, np.nan)
    return a[..., :2] + t[..., None] * (b[..., :2] - a[..., :2])


def in_plane_errors(labelled: np.ndarray, image_to_phantom: np.ndarray, phantom: NWirePhantom) -> np.ndarray:
    """Signed 2D errors (N, K, 2) pixels: segmented dot minus the wire's crossing (PLUS sign)."""
    crossings = wire_crossings(image_to_phantom, phantom)
    return np.asarray(labelled, float).reshape(crossings.shape) - crossings


def image_corners(frame_shape: tuple[int, int], with_centre: bool = False) -> np.ndarray:
    """The four corner pixels (x, y) of an (H, W) frame, plus its centre if asked."""
    h, w = frame_shape
    pts = [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]]
    if with_centre:
        pts.append([(w - 1) / 2, (h - 1) / 2])
    return np.asarray(pts, float)


def calibration_error(estimated: np.ndarray, truth: np.ndarray, frame_shape: tuple[int, int]) -> float:
    """Mean distance (mm) of the image corners and centre mapped by ``estimated`` and ``truth``."""
    pts = image_corners(frame_shape, with_centre=True)
    return float(np.linalg.norm(geometry.apply(estimated, pts) - geometry.apply(truth, pts), axis=1).mean())


def calibration_reproducibility(calibrations, frame_shape: tuple[int, int]) -> float:
    """CRE (mm): mean over the four image corners of the mean distance of each calibration's mapped
    corner from the mean mapped corner.

    Parameters
    ----------
    calibrations : (C, 4, 4) ImageToProbe estimates from disjoint subsets of frames.
    """
    cals = np.asarray(calibrations, float).reshape(-1, 4, 4)
    mapped = geometry.apply(cals[:, None], image_corners(frame_shape)[None])  # (C, 4, 3)
    return float(np.linalg.norm(mapped - mapped.mean(axis=0), axis=2).mean())


def rotation_translation_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Angle (degrees) between the orthonormalised rotations of two ImageToProbe matrices and the
    distance (mm) of their translations (how PLUS's own test compares calibrations)."""
    ra = geometry.orthonormalize(np.asarray(a, float))[:3, :3]
    rb = geometry.orthonormalize(np.asarray(b, float))[:3, :3]
    cos = np.clip((np.trace(ra.T @ rb) - 1) / 2, -1, 1)
    return float(np.degrees(np.arccos(cos))), float(np.linalg.norm(np.asarray(a)[:3, 3] - np.asarray(b)[:3, 3]))


__all__ = [
    "pre3d_errors",
    "best_fraction_stats",
    "wire_crossings",
    "in_plane_errors",
    "image_corners",
    "calibration_error",
    "calibration_reproducibility",
    "rotation_translation_difference",
]
