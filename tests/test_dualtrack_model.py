"""DualTrack network: sizes, attention formula, tiling/chunking rules, official fixture."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from freehand3d.tracking import PRESETS, DualTrack, load_dualtrack
from freehand3d.tracking.model import attention
from freehand3d.tracking.model.local import cnn_chunks

sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import refs  # noqa: E402


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, n_params", [("dualtrack-2024", 101_853_702), ("dualtrack-tusrec2025", 108_538_374)]
)
def test_official_presets_have_the_published_sizes(preset, n_params):
    with torch.device("meta"):  # sizes only: no memory, no initialisation
        model = DualTrack(preset)
    assert _n_params(model) == n_params  # SPEC §1
    assert len(model.state_dict()) == 854


def test_tiny_preset_is_small_and_runs_on_its_input_sizes():
    model = DualTrack("tiny").eval()
    assert _n_params(model) * 4 < 20e6  # float32 checkpoint <= 20 MB
    cfg = model.config
    assert (cfg.local_size, cfg.pool_grid, cfg.global_size) == (128, 8, 112)  # the shipped checkpoint's
    with torch.inference_mode():
        local, glob = torch.rand(1, 3, 1, 128, 128), torch.rand(1, 3, 1, 112, 112)
        out = model(local, glob, return_features=True)
    d = PRESETS["tiny"].feature_dim
    assert out["local_features"].shape == (1, 3, d)
    assert out["global_features"].shape == (1, 1, d)  # frame 0 only
    assert out["decoder_output"].shape == (1, 3, d)
    assert out["head_output"].shape == (1, 2, 6)
    assert torch.isfinite(out["head_output"]).all()


def test_relative_key_bias_matches_the_spec_formula():
    gen = torch.Generator().manual_seed(3)
    max_pos, n, d = 7, 6, 4
    q = torch.randn(2, 3, n, d, generator=gen, dtype=torch.float64)
    table = torch.randn(2 * max_pos - 1, d, generator=gen, dtype=torch.float64)
    expected = torch.empty(2, 3, n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            expected[:, :, i, j] = (q[:, :, i] * table[i - j + max_pos - 1]).sum(-1)
    # measured max |diff| 4.4e-16 (rel 1.2e-15) (AMD EPYC); tolerance 22.5x that
    assert torch.allclose(attention.relative_key_bias(q, table, n), expected, atol=1e-14, rtol=0)
    # a block of queries starting at row 2 sees the same rows of the full matrix
    block = attention.relative_key_bias(q[:, :, 2:5], table, n, query_offset=2)
    assert torch.allclose(block, expected[:, :, 2:5], atol=1e-14, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    with pytest.raises(ValueError, match="exceeds"):
        attention.relative_key_bias(torch.zeros(1, 1, 8, d, dtype=torch.float64), table, 8)


def test_attention_with_relative_keys_matches_explicit_softmax(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    mha = attention.MultiHeadAttention(8, 2, max_positions=10).double()
    with torch.no_grad():
        mha.relative_table.normal_(0, 0.5, generator=gen)
    x = torch.randn(1, 9, 8, generator=gen, dtype=torch.float64)
    q = mha.query(x).view(1, 9, 2, 4).transpose(1, 2)
    k = mha.key(x).view(1, 9, 2, 4).transpose(1, 2)
    v = mha.value(x).view(1, 9, 2, 4).transpose(1, 2)
    idx = torch.arange(9)[:, None] - torch.arange(9)[None, :] + 9
    rel = torch.einsum("bhid,ijd->bhij", q, mha.relative_table[idx])
    weights = torch.softmax((q @ k.transpose(-1, -2) + rel) / 2.0, dim=-1)
    expected = (weights @ v).transpose(1, 2).reshape(1, 9, 8)
    assert torch.allclose(mha(x), expected, atol=1e-13, rtol=0)  # measured max |diff| 1.1e-16 (rel 5.0e-16) (AMD EPYC); tolerance 901x that
    # query blocking (used for long sweeps) gives the same result
    monkeypatch.setattr(attention, "MAX_SCORE_ELEMENTS", 2 * 9 * 2)
    assert torch.allclose(mha(x), expected, atol=1e-13, rtol=0)  # measured max |diff| 1.1e-16 (rel 7.4e-16) (AMD EPYC); tolerance 901x that


@pytest.mark.parametrize(
    "n, expected",
    [
        (1024, [(0, 1024)]),
        (1030, [(0, 515), (515, 1030)]),
        (1600, [(0, 800), (800, 1600)]),
        (2049, [(0, 683), (683, 1366), (1366, 2049)]),
        (4096, [(0, 820), (820, 1640), (1640, 2460), (2460, 3280), (3280, 4096)]),
    ],
)
def test_cnn_chunks_follow_torch_chunk(n, expected):
    assert cnn_chunks(n, 1024) == expected
    k = n // 1024 + 1 if n > 1024 else 1
    sizes = [len(c) for c in torch.arange(n).chunk(k)]
    assert [hi - lo for lo, hi in expected] == sizes
    assert cnn_chunks(n, None) == [(0, n)]


def _small_model(**changes):
    # float32: these tests are about which frames feed which outputs, not about rounding
    return refs.randomize(DualTrack(refs.small_config(**changes)), seed=11)


def test_cnn_tiling_with_halo_equals_one_run():
    model = _small_model()
    gen = torch.Generator().manual_seed(1)
    crops = torch.rand(1, 45, 1, 16, 16, generator=gen)
    enc = model.local_encoder
    assert model.config.temporal_halo == 17
    with torch.inference_mode():
        whole = enc._cnn_tokens(crops)
        tiled = enc.frame_tokens(lambda lo, hi: crops[:, lo:hi], 45, tile=4)
        # a tile without halo differs: the zero padding at its borders reaches the outputs
        cut = torch.cat([enc._cnn_tokens(crops[:, lo : lo + 15]) for lo in range(0, 45, 15)], dim=1)
    assert torch.allclose(tiled, whole, atol=1e-5, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    assert (cut - whole).abs().max() > 1e-2


def test_batchnorm_folding_keeps_the_cnn_function():
    model = _small_model().double()
    gen = torch.Generator().manual_seed(8)
    clip = torch.rand(1, 1, 6, 16, 16, generator=gen, dtype=torch.float64)
    frames = torch.rand(3, 1, 16, 16, generator=gen, dtype=torch.float64)
    with torch.inference_mode():
        for cnn, x in ((model.local_encoder.cnn, clip), (model.global_encoder.cnn, frames)):
            fused = cnn.fused_for_inference()
            assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in fused.modules())
            expected = cnn(x)
            assert expected.abs().max() > 0.1
            # measured max |diff| 8.9e-16 (rel 7.6e-15) (AMD EPYC); tolerance > 1000x that
            assert torch.allclose(fused(x), expected, atol=1e-12, rtol=0)


def test_chunking_rule_of_the_2025_preset_is_applied_for_long_sweeps():
    # the 2025 rule (threshold 1024, P = 4096) on a structurally identical small network
    model = _small_model(max_positions=4096, cnn_chunk_threshold=1024)
    n = 1030
    gen = torch.Generator().manual_seed(2)
    crops = torch.rand(1, n, 1, 16, 16, generator=gen)
    glob = torch.rand(1, 65, 1, 16, 16, generator=gen)
    enc = model.local_encoder
    enc.cnn_tile = 400  # tiles inside each chunk must not blur the chunk border
    with torch.inference_mode():
        out = model(crops, glob, return_features=True)
        # reference: torch.chunk into 2 pieces, each run alone (zero-padded at its own borders)
        expected_tokens = torch.cat([enc._cnn_tokens(piece) for piece in crops.chunk(2, dim=1)], dim=1)
        expected_local = enc.encode_tokens(expected_tokens)
        # without chunking (2024 rule), frames near the border see across it: frames 470..559
        # give exact unchunked tokens for frames 487..542
        window = enc._cnn_tokens(crops[:, 470:560])[:, 17:-17]
    assert torch.allclose(out["local_features"], expected_local, atol=1e-5, rtol=0)  # measured: exact (max |diff| 0, AMD EPYC)
    diff = (expected_tokens[:, 487:543] - window).abs().amax(dim=(0, 2))
    border = 515 - 487
    # frames within the CNN's reach (17) of the chunk border change, the others do not
    assert diff[border - 1] > 1e-2 and diff[border] > 1e-2
    assert diff[: border - 17].max() < 1e-5 and diff[border + 17 :].max() < 1e-5
    assert out["head_output"].shape == (1, n - 1, 6)
    assert out["global_features"].shape == (1, 65, 16)


def test_forward_rejects_bad_shapes_and_lengths():
    model = DualTrack(refs.small_config(max_positions=8)).eval()
    with torch.inference_mode():
        with pytest.raises(ValueError, match="at least 2 frames"):
            model(torch.zeros(1, 1, 1, 16, 16), torch.zeros(1, 1, 1, 16, 16))
        with pytest.raises(ValueError, match="exceeds the 8 frames"):
            model(torch.zeros(1, 9, 1, 16, 16), torch.zeros(1, 9, 1, 16, 16))
        with pytest.raises(ValueError, match="1x1 CNN maps"):
            model(torch.zeros(1, 4, 1, 32, 32), torch.zeros(1, 4, 1, 16, 16))
        with pytest.raises(ValueError, match="global input has 3 frames"):
            model(torch.zeros(1, 4, 1, 16, 16), torch.zeros(1, 3, 1, 16, 16))


# ----------------------------------------------------------------------------- official fixture


def _official_model(dtype):
    model = load_dualtrack(refs.official_weights("dualtrack-2024"))
    assert model.load_report.ok and model.load_report.loaded == 854
    return model.to(dtype)


@pytest.mark.parametrize(
    "dtype, tol", [(torch.float64, 1e-10), pytest.param(torch.float32, 5e-4, marks=pytest.mark.slow)]
)
def test_global_encoder_decoder_and_head_match_the_official_fixture(dtype, tol):
    fx = refs.fixture()
    model = _official_model(dtype)
    glob = torch.from_numpy(fx["global_input"]).to(dtype)[None, :, None]
    idx = torch.from_numpy(fx["global_indices"])
    assert idx.tolist() == model.global_indices(40).tolist()
    with torch.inference_mode():
        global_features = model.global_encoder(glob[:, idx], idx)
        # decoder fed the official local features, so this checks the decoder alone
        out = model.decode(torch.from_numpy(fx["local_features"]).to(dtype)[None], global_features)
    # measured max |diff| 5.7e-15 (rel 5.0e-10) (float64 case, AMD EPYC; tolerance > 1000x that); float32 (slow) 2.5e-6 (tol 5e-4: 200x)
    np.testing.assert_allclose(global_features[0].double().numpy(), fx["global_features"], atol=tol, rtol=0)
    # measured max |diff| 1.5e-14 (rel 6.2e-10) (float64 case, AMD EPYC; tolerance > 1000x that); float32 (slow) 3.7e-6 (tol 5e-4: 135x)
    np.testing.assert_allclose(out["decoder_output"][0].double().numpy(), fx["decoder_output"], atol=tol, rtol=0)
    # measured max |diff| 1.1e-14 (rel 1.9e-12) (float64 case, AMD EPYC; tolerance > 1000x that); float32 (slow) 2.7e-6 (tol 5e-4: 185x)
    np.testing.assert_allclose(out["head_output"][0].double().numpy(), fx["head_output"], atol=tol, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype, tol, pose_tol", [(torch.float64, 1e-10, 1e-4), (torch.float32, 5e-4, 2e-3)])
def test_full_forward_matches_the_official_fixture(dtype, tol, pose_tol):
    from freehand3d.tracking import compose_poses

    fx = refs.fixture()
    model = _official_model(dtype)
    local = torch.from_numpy(fx["local_input"]).to(dtype)[None, :, None]
    glob = torch.from_numpy(fx["global_input"]).to(dtype)[None, :, None]
    with torch.inference_mode():
        out = model(local, glob, return_features=True)
    # measured max |diff| (AMD EPYC, AVX2) local / global features, decoder, head: float64 3.1e-15 /
    # 5.7e-15 / 1.4e-14 / 1.1e-14 (tol 1e-10: > 7000x the worst); float32 1.4e-5 / 2.5e-6 / 1.9e-5 /
    # 8.7e-6 (tol 5e-4: 26x the worst; values up to 3.6)
    for name in ("local_features", "global_features", "decoder_output", "head_output"):
        np.testing.assert_allclose(out[name][0].double().numpy(), fx[name], atol=tol, rtol=0, err_msg=name)
    poses_global, poses_local = compose_poses(out["head_output"])
    # measured max |diff| global / local poses (mm, global up to 53.5): float64 6.6e-6 / 5.7e-8 (the
    # fixture's own float32 rounding; pose_tol 1e-4: 15x), float32 2.8e-5 / 8.6e-6 (pose_tol 2e-3: 70x)
    np.testing.assert_allclose(poses_global, fx["poses_global"], atol=pose_tol, rtol=0)
    np.testing.assert_allclose(poses_local, fx["poses_local"], atol=pose_tol, rtol=0)
