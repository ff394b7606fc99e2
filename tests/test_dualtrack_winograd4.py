"""Winograd F(4x4,3x3) path of the local CNN's 3x3x3 convolutions against torch's Conv3d."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freehand3d.tracking import DualTrack, predict
from freehand3d.tracking.model.winograd4 import Winograd4Conv3d, winograd4_conv3d, winograd4_kernels

sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import conv_case as _case, refs  # noqa: E402


@pytest.mark.parametrize(
    "b, cin, cout, t, h, w",
    # maps that are and are not multiples of the 4x4 output tile, single frames, single rows
    [(1, 8, 8, 7, 8, 8), (2, 5, 3, 4, 9, 7), (1, 16, 4, 1, 3, 3), (1, 4, 6, 3, 1, 5), (1, 3, 5, 6, 13, 10)],
)
def test_winograd4_matches_conv3d_in_float64_for_every_chunking(b, cin, cout, t, h, w):
    x, weight, bias = _case(1, b, cin, cout, t, h, w, torch.float64)
    u = winograd4_kernels(weight)
    scale = F.conv3d(x, weight, bias, padding=1).abs().max().item()
    for valid in (False, True) if t >= 3 else (False,):
        expected = F.conv3d(x, weight, bias, padding=(0, 1, 1) if valid else 1)
        # time chunks with borders inside the clip and at its zero-padded ends; bands of 1 tile row
        # and of the whole map
        for chunk, rows in ((1, 1), (2, 1), (3, 10**6), (None, None)):
            got = winograd4_conv3d(x, u, bias, valid, chunk, rows)
            assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last_3d)
            # measured max |diff| 3.4e-13 (rel 6.6e-15) over these cases (AMD EPYC); tolerance 1500x
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-11 * scale)
    no_bias = winograd4_conv3d(x, u, None)
    torch.testing.assert_close(no_bias, F.conv3d(x, weight, None, padding=1), rtol=0, atol=1e-11 * scale)


def test_winograd4_float32_error_is_the_documented_size():
    # a layer-shaped case (64 channels in and out, a 32 x 32 map); reference: float64 conv3d
    x, weight, bias = _case(2, 1, 64, 64, 6, 32, 32, torch.float32)
    exact = F.conv3d(x.double(), weight.double(), bias.double(), padding=1)
    got = winograd4_conv3d(x, winograd4_kernels(weight), bias)
    direct = F.conv3d(x, weight, bias, padding=1)
    rel = ((got.double() - exact).abs().max() / exact.abs().max()).item()
    rel_direct = ((direct.double() - exact).abs().max() / exact.abs().max()).item()
    # F(4x4,3x3)'s transforms multiply by up to 8 (A^T) and 5 (B^T) and divide by 6 and 24 (G):
    # measured rel 5.6e-6 here (direct conv 3.2e-7), 5.8e-6 .. 8.9e-6 on the DualTrack 64..512-
    # channel layers with 16 frames (direct 1.9e-6 .. 3.6e-6) (AMD EPYC); bound 4e-5 (~4.5x)
    assert rel < 4e-5 and rel_direct < 1e-5


def test_winograd4_module_falls_back_and_follows_dtype():
    with pytest.raises(ValueError, match="3x3x3, stride 1"):
        Winograd4Conv3d(nn.Conv3d(4, 4, 1))
    with pytest.raises(ValueError, match="do not fit"):
        winograd4_conv3d(torch.zeros(1, 3, 2, 4, 4), winograd4_kernels(torch.zeros(2, 4, 3, 3, 3)))
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, 3, padding=1).eval()
    fast = Winograd4Conv3d(conv).double()  # kernels recomputed from the float64 weight
    x = torch.randn(1, 6, 5, 6, 6, dtype=torch.float64)
    # measured max |diff| 8.9e-16 (AMD EPYC); tolerance > 1000x that
    torch.testing.assert_close(fast(x), conv.double()(x), rtol=0, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # falls back to the plain convolution
        assert fast(x.float()).dtype == torch.bfloat16
    assert fast(x[:, :, :2], valid_time=True).shape == (1, 5, 0, 6, 6)  # fewer than 3 frames: none out


def test_predict_with_winograd4_matches_the_direct_convolutions(frames40, monkeypatch):
    from freehand3d.tracking.model import winograd4

    calls = []
    real = winograd4.winograd4_conv3d
    monkeypatch.setattr(winograd4, "winograd4_conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    model = refs.randomize(DualTrack(cfg), seed=8)
    frames = frames40[:12]
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        direct = predict(frames, model, dtype=dtype, kernel="direct", threads=1)["head_output"]
        assert not calls
        # streamed in pieces of 5: 3 pushes per conv (the last with the end padding)
        fast = predict(frames, model, dtype=dtype, kernel="winograd4", piece=5, threads=2)
        assert len(calls) == 13 * 3 and set(fast["info"]["kernels"].values()) == {"winograd4"}
        calls.clear()
        assert np.abs(direct).max() > 1e-2
        # float64: measured max |diff| 1.0e-15; float32: 4.8e-7 (rel 1.8e-7) (AMD EPYC);
        # tolerances > 50x that
        np.testing.assert_allclose(fast["head_output"], direct, atol=tol * np.abs(direct).max(), rtol=0)
        one = predict(frames, model, dtype=dtype, kernel="winograd4", piece=12, threads=1)["head_output"]
        calls.clear()
        # the pieces and the thread count change nothing but the GEMMs' summation order
        np.testing.assert_allclose(one, fast["head_output"], atol=tol * np.abs(direct).max(), rtol=0)


@pytest.fixture(scope="module")
def frames40():
    return refs.gen_frames(40, 2024)


def test_predict_frees_the_cnn_copies_before_the_decoder_and_trims_per_piece(frames40, monkeypatch):
    # peak RSS at 1030 frames (docs/tracking.md): the local CNN's inference copy with its F(4x4)
    # kernels must be gone when the decoder runs, and the heap is trimmed after every piece
    import weakref

    from freehand3d.tracking import infer

    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    model = refs.randomize(DualTrack(cfg), seed=8)
    copies, alive_at_decode, trims = [], [], []
    real_cnns, real_decode, real_trim = infer.inference_cnns, model.decode, infer.release_free_memory

    def cnns(*a, **k):
        out = real_cnns(*a, **k)
        copies.extend(weakref.ref(m) for m in out[:2])
        return out

    def decode(*a, **k):
        alive_at_decode.extend(r() is not None for r in copies)
        return real_decode(*a, **k)

    monkeypatch.setattr(infer, "inference_cnns", cnns)
    monkeypatch.setattr(model, "decode", decode)
    monkeypatch.setattr(infer, "release_free_memory", lambda: trims.append(1) or real_trim())
    predict(frames40[:12], model, kernel="winograd4", piece=5, threads=1)
    assert alive_at_decode == [False, False]
    assert len(trims) >= 3  # 12 frames in pieces of 5: 3 pieces (+ the global CNN batches)


def test_streamed_residuals_are_queued_without_a_concatenated_copy():
    from freehand3d.tracking.model.streaming import StreamingCNN

    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    cnn = refs.randomize(DualTrack(cfg), seed=8).local_encoder.cnn.fused_for_inference().eval()
    x = torch.randn(1, 1, 30, 32, 32)
    with torch.inference_mode():
        whole = cnn(x)
        stream = StreamingCNN(cnn)
        parts = [stream.push(x[:, :, :20]), stream.push(x[:, :, 20:21])]  # past the CNN's 17-frame delay
        # mid-stream every block's queue holds its two frames of delay, as pieces (views or small
        # copies), not a concatenation of the residual with them
        assert [sum(q.shape[2] for q in b.queue) for b in stream.blocks] == [2] * len(stream.blocks)
        parts.append(stream.push(x[:, :, 21:], final=True))
        assert all(b.queue == () for b in stream.blocks)
    # measured max |diff| 7.7e-7 .. 1.3e-6 (rel 3.4e-7 .. 4.9e-7 over 3 random inputs: oneDNN's
    # summation order differs with the frames per call, AMD EPYC); tolerance 1e-5 relative (20x)
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, rtol=0, atol=1e-5 * whole.abs().max().item())
