"""Property-based tests of freehand3d.geometry (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from freehand3d import geometry

TAIT_BRYAN = [c for c in geometry.EULER_CONVENTIONS if len(set(c.lower())) == 3]
PROPER_EULER = [c for c in geometry.EULER_CONVENTIONS if len(set(c.lower())) == 2]

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
angle = st.floats(-np.pi, np.pi, allow_nan=False)
unit_quaternion = hnp.arrays(np.float64, 4, elements=st.floats(-1, 1)).filter(lambda q: np.linalg.norm(q) > 0.1)


@st.composite
def rigid_transforms(draw):
    q = draw(unit_quaternion)
    q = q / np.linalg.norm(q)
    w, x, y, z = q
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    t = draw(hnp.arrays(np.float64, 3, elements=finite))
    return geometry.rigid(rot, t)


@st.composite
def affine_transforms(draw):
    """Rigid · diagonal scaling (pixel spacing) · rigid: well-conditioned affine maps like ImageToProbe."""
    scale = draw(hnp.arrays(np.float64, 3, elements=st.floats(0.01, 10)))
    return draw(rigid_transforms()) @ geometry.scaling(scale) @ draw(rigid_transforms())


def rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def angle_difference(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi)


# ---------------------------------------------------------------------------- inverse / composition


@settings(max_examples=25, deadline=None)
@given(affine_transforms())
def test_invert_is_inverse(a):
    np.testing.assert_allclose(geometry.compose(a, geometry.invert(a)), np.eye(4), atol=1e-8)  # measured max |diff| 3.8e-12 over 25 calls
    np.testing.assert_allclose(geometry.invert(geometry.invert(a)), a, atol=1e-8 * (1 + np.abs(a).max()))  # measured max |diff| 4.3e-11 over 25 calls


@settings(max_examples=25, deadline=None)
@given(rigid_transforms())
def test_invert_rigid_equals_invert(a):
    np.testing.assert_allclose(geometry.invert_rigid(a), geometry.invert(a), atol=1e-9)  # measured max |diff| 8.0e-13 over 25 calls
    assert geometry.is_rigid(geometry.invert_rigid(a))


@settings(max_examples=25, deadline=None)
@given(affine_transforms(), affine_transforms(), hnp.arrays(np.float64, 3, elements=finite))
def test_compose_order_and_inverse_of_product(a, b, point):
    # compose(A, B) applies B first
    np.testing.assert_allclose(
        geometry.apply(geometry.compose(a, b), point), geometry.apply(a, geometry.apply(b, point)), rtol=1e-9, atol=1e-6
    )  # measured max |diff| 1.5e-11 over 25 calls
    np.testing.assert_allclose(
        geometry.invert(geometry.compose(a, b)),
        geometry.compose(geometry.invert(b), geometry.invert(a)),
        rtol=1e-7,
        atol=1e-6,
    )  # measured max |diff| 7.6e-10 over 25 calls


@settings(max_examples=25, deadline=None)
@given(st.lists(rigid_transforms(), min_size=2, max_size=5))
def test_stacks_broadcast_like_single_matrices(mats):
    stack = geometry.stack(mats)
    inv = geometry.invert(stack)
    for i, m in enumerate(mats):
        np.testing.assert_allclose(inv[i], geometry.invert(m), atol=1e-12)  # measured: exact (max |diff| 0 over 89 calls)
    composed = geometry.compose(stack, mats[0])
    np.testing.assert_allclose(composed[-1], mats[-1] @ mats[0], atol=1e-9)  # measured: exact (max |diff| 0 over 25 calls)
    assert geometry.is_rigid(stack).all()


@settings(max_examples=25, deadline=None)
@given(affine_transforms())
def test_orthonormalize_gives_nearest_rigid(a):
    r = geometry.orthonormalize(a)
    assert geometry.is_rigid(r, atol=1e-8)  # measured max |R^T R - I|, |det - 1| 2.3e-15 over 300 examples (AMD EPYC)
    np.testing.assert_array_equal(r[:3, 3], a[:3, 3])


def test_apply_2d_points_use_z_zero():
    t = geometry.rigid(rz(0.3), [1, 2, 3])
    np.testing.assert_allclose(geometry.apply(t, [[4.0, 5.0]]), geometry.apply(t, [[4.0, 5.0, 0.0]]))  # measured: exact (max |diff| 0)
    with pytest.raises(ValueError):
        geometry.apply(t, [[1.0, 2.0, 3.0, 4.0]])
    with pytest.raises(ValueError):
        geometry.as_matrix_stack(np.eye(3))


# ---------------------------------------------------------------------------- 6-DoF parameters


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(TAIT_BRYAN),
    hnp.arrays(np.float64, 3, elements=finite),
    st.floats(-np.pi + 1e-3, np.pi - 1e-3),
    st.floats(-np.pi / 2 + 0.05, np.pi / 2 - 0.05),
    st.floats(-np.pi + 1e-3, np.pi - 1e-3),
)
def test_params_round_trip_tait_bryan(convention, t, a1, a2, a3):
    params = np.array([*t, a1, a2, a3])
    back = geometry.matrix_to_params(geometry.params_to_matrix(params, convention), convention)
    np.testing.assert_allclose(back[:3], t, atol=1e-9)  # measured: exact (max |diff| 0 over 25 calls)
    assert angle_difference(back[3:], params[3:]).max() < 1e-7


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(PROPER_EULER),
    hnp.arrays(np.float64, 3, elements=finite),
    st.floats(-np.pi + 1e-3, np.pi - 1e-3),
    st.floats(0.05, np.pi - 0.05),
    st.floats(-np.pi + 1e-3, np.pi - 1e-3),
)
def test_params_round_trip_proper_euler(convention, t, a1, a2, a3):
    params = np.array([*t, a1, a2, a3])
    back = geometry.matrix_to_params(geometry.params_to_matrix(params, convention), convention)
    np.testing.assert_allclose(back[:3], t, atol=1e-9)  # measured: exact (max |diff| 0 over 25 calls)
    assert angle_difference(back[3:], params[3:]).max() < 1e-7


@pytest.mark.parametrize("convention", geometry.EULER_CONVENTIONS)
def test_every_convention_round_trips_in_degrees(convention):
    rng = np.random.default_rng(abs(hash(convention)) % 2**32)
    middle = (10.0, 80.0) if len(set(convention.lower())) == 3 else (10.0, 170.0)
    params = np.column_stack(
        [rng.uniform(-50, 50, (20, 3)), rng.uniform(-170, 170, 20), rng.uniform(*middle, 20), rng.uniform(-170, 170, 20)]
    )
    mats = geometry.params_to_matrix(params, convention, degrees=True)
    assert mats.shape == (20, 4, 4) and geometry.is_rigid(mats).all()
    np.testing.assert_allclose(geometry.matrix_to_params(mats, convention, degrees=True), params, atol=1e-8)  # measured max |diff| 1.3e-13 over 24 calls


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from(geometry.EULER_CONVENTIONS),
    angle,
    st.sampled_from([-1.0, 1.0]),
    st.floats(-1e-6, 1e-6),
    angle,
)
def test_matrix_equality_near_gimbal_lock(convention, a1, side, tiny, a3):
    """At (and next to) gimbal lock the angles are not unique, but the matrix they give back must be."""
    if len(set(convention.lower())) == 3:
        middle = side * np.pi / 2 + tiny
    else:
        middle = (0.0 if side < 0 else np.pi) + tiny
    m = geometry.params_to_matrix([1.0, 2.0, 3.0, a1, middle, a3], convention)
    again = geometry.params_to_matrix(geometry.matrix_to_params(m, convention), convention)
    np.testing.assert_allclose(again, m, atol=1e-6)  # measured max |diff| 5.6e-16 over 25 calls


@settings(max_examples=25, deadline=None)
@given(rigid_transforms(), st.sampled_from(geometry.EULER_CONVENTIONS))
def test_matrix_params_matrix_for_any_rotation(m, convention):
    np.testing.assert_allclose(geometry.params_to_matrix(geometry.matrix_to_params(m, convention), convention), m, atol=1e-7)  # measured max |diff| 5.6e-16 over 25 calls


@settings(max_examples=25, deadline=None)
@given(angle, angle, angle)
def test_dualtrack_convention_is_rz_ry_rx(a, b, c):
    """DualTrack/TUS-REC: [tx, ty, tz, rx, ry, rz] with scipy 'xyz' extrinsic, degrees -> R = Rz·Ry·Rx."""
    m = geometry.params_to_matrix([0, 0, 0, *np.degrees([a, b, c])], "xyz", degrees=True)
    np.testing.assert_allclose(m[:3, :3], rz(c) @ ry(b) @ rx(a), atol=1e-12)  # measured max |diff| 3.9e-16 over 25 calls
    # the intrinsic sequence is the reverse product
    np.testing.assert_allclose(geometry.params_to_matrix([0, 0, 0, a, b, c], "XYZ")[:3, :3], rx(a) @ ry(b) @ rz(c), atol=1e-12)  # measured max |diff| 3.3e-16 over 25 calls


def test_params_need_an_explicit_known_convention():
    with pytest.raises(ValueError, match="Euler convention"):
        geometry.params_to_matrix(np.zeros(6), "abc")
    with pytest.raises(TypeError):
        geometry.params_to_matrix(np.zeros(6))  # no default convention on purpose
    with pytest.raises(ValueError, match="6"):
        geometry.params_to_matrix(np.zeros(5), "xyz")


# ---------------------------------------------------------------------------- interpolation


@st.composite
def pose_sequences(draw):
    n = draw(st.integers(2, 6))
    gaps = draw(hnp.arrays(np.float64, n - 1, elements=st.floats(0.01, 2.0)))
    times = np.concatenate([[draw(st.floats(-10, 10))], gaps]).cumsum()
    poses = np.stack([draw(rigid_transforms()) for _ in range(n)])
    return times, poses


def _rotation_distance(a, b):
    return geometry.rotation_angle_deg(geometry.invert_rigid(a) @ b)


@settings(max_examples=25, deadline=None)
@given(pose_sequences(), hnp.arrays(np.float64, 8, elements=st.floats(0, 1)))
def test_interpolation_hits_endpoints_and_stays_rigid(seq, fractions):
    times, poses = seq
    out, ok = geometry.interpolate_poses(times, poses, times)
    assert ok.all()
    np.testing.assert_allclose(out, poses, atol=1e-8)  # measured max |diff| 8.9e-16 over 25 calls
    # clip: times[0] + 1.0 * (times[-1] - times[0]) can round one ulp past the last sample
    query = np.clip(times[0] + fractions * (times[-1] - times[0]), times[0], times[-1])
    out, ok = geometry.interpolate_poses(times, poses, query)
    assert ok.all()
    assert geometry.is_rigid(out, atol=1e-9).all()
    np.testing.assert_allclose(np.linalg.det(out[:, :3, :3]), 1.0, atol=1e-9)  # measured max |diff| 1.1e-15 over 25 calls


@settings(max_examples=25, deadline=None)
@given(rigid_transforms(), rigid_transforms(), st.floats(0, 1))
def test_slerp_moves_along_the_shortest_rotation(a, b, f):
    total = _rotation_distance(a, b)
    assume(total < 179.0)  # the shortest path is ambiguous at 180 degrees
    out, _ = geometry.interpolate_poses([0.0, 1.0], np.stack([a, b]), [f])
    # measured max |diff| 1.2e-06 (AMD EPYC); tolerance 82.8x that
    assert _rotation_distance(a, out[0]) == pytest.approx(f * total, abs=1e-4)
    assert _rotation_distance(out[0], b) == pytest.approx((1 - f) * total, abs=1e-4)
    np.testing.assert_allclose(out[0, :3, 3], (1 - f) * a[:3, 3] + f * b[:3, 3], atol=1e-9)  # measured max |diff| 1.1e-13 over 25 calls


@settings(max_examples=25, deadline=None)
@given(pose_sequences())
def test_invalid_samples_are_ignored(seq):
    times, poses = seq
    assume(len(times) >= 3)
    corrupted = poses.copy()
    corrupted[1] = np.nan  # a tracker dropout
    expected, _ = geometry.interpolate_poses(np.delete(times, 1), np.delete(poses, 1, axis=0), times)
    got, ok = geometry.interpolate_poses(times, corrupted, times)
    np.testing.assert_allclose(got, expected, atol=1e-9)  # measured: exact (max |diff| 0 over 25 calls)
    assert ok.all()
    flagged, _ = geometry.interpolate_poses(times, poses, times, valid=np.arange(len(times)) != 1)
    np.testing.assert_allclose(flagged, expected, atol=1e-9)  # measured: exact (max |diff| 0 over 25 calls)


@settings(max_examples=25, deadline=None)
@given(pose_sequences(), st.floats(0.001, 100))
def test_out_of_range_queries(seq, beyond):
    times, poses = seq
    query = [times[0] - beyond, times[-1] + beyond]
    out, ok = geometry.interpolate_poses(times, poses, query)
    assert not ok.any()
    # measured max |diff| 8.9e-16 (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(out, poses[[0, -1]], atol=1e-8)  # the nearest end pose is held
    out, ok = geometry.interpolate_poses(times, poses, query, extrapolate=True)
    assert ok.all()


def test_interpolation_edge_cases():
    poses = np.stack([geometry.translation([0, 0, 0]), geometry.translation([10, 0, 0])])
    _, ok = geometry.interpolate_poses([0, 1], poses, [0.5], valid=[False, False])
    assert not ok.any()
    out, ok = geometry.interpolate_poses([0, 1], poses, [0.0, 0.5], valid=[True, False])
    assert ok.tolist() == [True, False] and np.allclose(out[1], poses[0])  # measured: exact (max |diff| 0, AMD EPYC)
    with pytest.raises(ValueError, match="increasing"):
        geometry.interpolate_poses([1, 0], poses, [0.5])


def test_nan_query_time_is_marked_invalid():
    poses = np.stack([geometry.translation([0, 0, 0]), geometry.translation([10, 0, 0])])
    out, ok = geometry.interpolate_poses([0, 1], poses, [np.nan, 0.5])
    assert ok.tolist() == [False, True]
    assert np.isfinite(out).all()


# ---------------------------------------------------------------------------- named frames


@settings(max_examples=25, deadline=None)
@given(st.lists(rigid_transforms(), min_size=3, max_size=3), affine_transforms())
def test_frame_graph_image_to_reference(links, image_to_probe):
    probe_to_tracker, reference_to_tracker, _ = links
    graph = geometry.FrameGraph(
        {"ProbeToTracker": probe_to_tracker, "ReferenceToTracker": reference_to_tracker, "ImageToProbe": image_to_probe}
    )
    expected = geometry.image_to_reference(probe_to_tracker, reference_to_tracker, image_to_probe)
    np.testing.assert_allclose(graph.get("ImageToReference"), expected, rtol=1e-8, atol=1e-6)  # measured max |diff| 9.1e-13 over 25 calls
    np.testing.assert_allclose(
        graph.get("ReferenceToImage"), geometry.invert(expected), rtol=1e-6, atol=1e-6 * (1 + np.abs(expected).max())
    )  # measured max |diff| 9.8e-11 over 25 calls
    assert set(graph.path_names("ImageToReference")) == {"ImageToProbe", "ProbeToTracker", "ReferenceToTracker"}
    np.testing.assert_array_equal(graph.get("TrackerToTracker"), np.eye(4))


def test_frame_graph_stacks_and_missing_links():
    rng = np.random.default_rng(0)
    probe = geometry.params_to_matrix(rng.normal(size=(5, 6)), "xyz")
    graph = geometry.FrameGraph({"ProbeToTracker": probe, "ImageToProbe": geometry.scaling([0.1, 0.2, 1])})
    assert graph.get("ImageToTracker").shape == (5, 4, 4)
    with pytest.raises(KeyError, match="Stylus"):
        graph.get("StylusToTracker")
    assert geometry.split_transform_name("ImageToTransducerOriginPixel") == ("Image", "TransducerOriginPixel")
    assert geometry.split_transform_name("StylusTipToStylusTransform") == ("StylusTip", "Stylus")
    with pytest.raises(ValueError):
        geometry.split_transform_name("ProbeTracker")


def test_pixel_helpers():
    grid = geometry.pixel_grid(3, 4)
    assert grid.shape == (12, 2) and grid[1].tolist() == [1, 0] and grid[-1].tolist() == [3, 2]
    assert geometry.frame_corners(3, 4).tolist() == [[0, 0], [3, 0], [3, 2], [0, 2]]
