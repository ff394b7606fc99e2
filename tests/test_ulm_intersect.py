"""Closed-form conic intersections against brute force, and the plane-wave (far-source) limit."""

import numpy as np
import pytest
from scipy.optimize import brentq

from freehand3d.ulm.intersect import ellipse_path, intersect_ellipses, intersect_plane_wave, plane_wave_path


def _brute_force_parabola(ei, di, ej, dj, n, samples=20000):
    """All intersections found by walking conic i (polar about its focus) and root-finding conic j."""
    n = np.asarray(n, float)

    def point(angle):
        w = np.stack([np.sin(angle), np.cos(angle)], axis=-1)
        # n.(e + r w) + r = d  ->  r = (d - n.e) / (1 + n.w)
        r = (di - n @ ei) / (1 + w @ n)
        return ei + r[..., None] * w

    def gap(angle):
        p = point(angle)
        return plane_wave_path(p, ej, n) - dj

    # the parabola opens against n: angles away from -n cover it
    base = np.arctan2(n[0], n[1])
    angles = base + np.linspace(-np.pi + 1e-3, np.pi - 1e-3, samples)
    values = gap(angles)
    roots = [brentq(gap, angles[k], angles[k + 1], xtol=1e-14) for k in np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))]
    return [point(a) for a in roots]


def _brute_force_ellipse(v, ei, di, ej, dj, samples=20000):
    centre = (v + ei) / 2
    half_focal = np.linalg.norm(ei - v) / 2
    a = di / 2
    b = np.sqrt(a**2 - half_focal**2)
    axis = (ei - v) / np.linalg.norm(ei - v) if half_focal > 0 else np.array([1.0, 0.0])
    normal = np.array([-axis[1], axis[0]])

    def point(angle):
        angle = np.asarray(angle, float)[..., None]
        return centre + a * np.cos(angle) * axis + b * np.sin(angle) * normal

    def gap(angle):
        return ellipse_path(point(angle), v, ej) - dj

    angles = np.linspace(0, 2 * np.pi, samples)
    values = gap(angles)
    roots = [brentq(gap, angles[k], angles[k + 1], xtol=1e-14) for k in np.flatnonzero(np.sign(values[:-1]) != np.sign(values[1:]))]
    return [point(x) for x in roots]


@pytest.mark.parametrize("angle_deg", [0.0, 1.0, -7.0])
def test_plane_wave_intersection_equals_brute_force(angle_deg):
    rng = np.random.default_rng(int(abs(angle_deg) * 10) + 1)
    n = np.array([np.sin(np.radians(angle_deg)), np.cos(np.radians(angle_deg))])
    for _ in range(6):
        scatterer = np.array([rng.uniform(-5, 5), rng.uniform(2, 12)])
        ei = np.array([rng.uniform(-6, 6), 0.0])
        ej = np.array([rng.uniform(-6, 6), 0.0])
        if abs(ei[0] - ej[0]) < 0.05:
            continue
        di, dj = plane_wave_path(scatterer, ei, n), plane_wave_path(scatterer, ej, n)
        closed = intersect_plane_wave(ei, di, ej, dj, n)
        brute = [p for p in _brute_force_parabola(ei, di, ej, dj, n) if p[1] > 0]
        assert len(brute) >= 1
        deepest = max(brute, key=lambda p: p[1])
        np.testing.assert_allclose(closed, deepest, atol=1e-8)  # measured max |diff| 2.5e-14 over 18 calls
        np.testing.assert_allclose(closed, scatterer, atol=1e-8)  # measured max |diff| 4.0e-14 over 18 calls


def test_shared_focus_ellipse_intersection_equals_brute_force():
    rng = np.random.default_rng(5)
    for source in (np.array([0.0, -15.0]), np.array([3.0, -4.0]), np.array([-1.0, 0.0])):
        for _ in range(5):
            scatterer = np.array([rng.uniform(-5, 5), rng.uniform(2, 12)])
            ei = np.array([rng.uniform(-6, 6), 0.0])
            ej = np.array([rng.uniform(-6, 6), 0.0])
            di, dj = ellipse_path(scatterer, source, ei), ellipse_path(scatterer, source, ej)
            closed = intersect_ellipses(source, ei, di, ej, dj)
            brute = [p for p in _brute_force_ellipse(source, ei, di, ej, dj) if p[1] > 0]
            deepest = max(brute, key=lambda p: p[1])
            np.testing.assert_allclose(closed, deepest, atol=1e-8)  # measured max |diff| 6.8e-14 over 15 calls
            np.testing.assert_allclose(closed, scatterer, atol=1e-8)  # measured max |diff| 1.4e-13 over 15 calls


def test_far_virtual_source_converges_to_the_plane_wave_solution():
    scatterer = np.array([1.3, 7.5])
    ei, ej = np.array([-2.0, 0.0]), np.array([0.4, 0.0])
    n = np.array([0.0, 1.0])
    parabola = intersect_plane_wave(ei, plane_wave_path(scatterer, ei, n), ej, plane_wave_path(scatterer, ej, n), n)
    errors = []
    for distance in (1e2, 1e3, 1e4):
        # a far source behind the array sends an almost plane wave; paths measured the plane-wave way
        source = np.array([0.0, -distance])
        di = plane_wave_path(scatterer, ei, n) + distance
        dj = plane_wave_path(scatterer, ej, n) + distance
        errors.append(np.linalg.norm(intersect_ellipses(source, ei, di, ej, dj) - parabola))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 2e-3
    np.testing.assert_allclose(parabola, scatterer, atol=1e-10)  # measured max |diff| 8.9e-16


def test_vectorised_and_no_solution_gives_nan():
    rng = np.random.default_rng(0)
    points = np.stack([rng.uniform(-5, 5, 500), rng.uniform(1, 15, 500)], axis=1)
    ei = np.stack([rng.uniform(-6, 6, 500), np.zeros(500)], axis=1)
    ej = ei + np.array([0.1, 0.0])
    n = np.array([0.0, 1.0])
    out = intersect_plane_wave(ei, plane_wave_path(points, ei, n), ej, plane_wave_path(points, ej, n), n)
    np.testing.assert_allclose(out, points, atol=1e-8)  # measured max |diff| 7.7e-13
    # path difference larger than the element distance: impossible (triangle inequality)
    impossible = intersect_plane_wave(np.array([0.0, 0.0]), 10.0, np.array([0.1, 0.0]), 11.0, n)
    assert np.all(np.isnan(impossible))
