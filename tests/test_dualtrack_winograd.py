"""Winograd F(2x2,3x3) fast path of the local CNN's 3x3x3 convolutions against torch's Conv3d."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from freehand3d.tracking import DualTrack
from freehand3d.tracking.model.winograd import WinogradConv3d, is_winograd_eligible, winograd_conv3d, winograd_kernels

sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import conv_case as _case, refs  # noqa: E402


@pytest.mark.parametrize(
    "b, cin, cout, t, h, w",
    [(1, 8, 8, 7, 8, 8), (2, 5, 3, 4, 9, 7), (1, 16, 4, 1, 3, 3), (1, 4, 6, 2, 1, 5)],
)
def test_winograd_matches_conv3d_in_float64_for_every_chunking(b, cin, cout, t, h, w):
    x, weight, bias = _case(1, b, cin, cout, t, h, w, torch.float64)
    expected = F.conv3d(x, weight, bias, padding=1)
    u = winograd_kernels(weight)
    for chunk in (1, 2, 3, t):  # chunk borders inside the clip, and the zero-padded clip ends
        got = winograd_conv3d(x, u, bias, chunk)
        assert got.shape == expected.shape and got.is_contiguous(memory_format=torch.channels_last_3d)
        # measured max |diff| 5.0e-14 (rel 7.3e-12) (AMD EPYC); tolerance > 1000x that
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * expected.abs().max().item())
    no_bias = winograd_conv3d(x, u, None, 2)
    # measured max |diff| 5.7e-14 (rel 1.4e-12) (AMD EPYC); tolerance 925x that
    torch.testing.assert_close(no_bias, F.conv3d(x, weight, None, padding=1), rtol=0, atol=1e-12 * expected.abs().max().item())


def test_winograd_float32_is_within_rounding_of_conv3d():
    x, weight, bias = _case(2, 1, 64, 32, 6, 16, 16, torch.float32)
    expected = F.conv3d(x, weight, bias, padding=1)
    got = winograd_conv3d(x, winograd_kernels(weight), bias, 4)
    rel = ((got - expected).abs().max() / expected.abs().max()).item()
    assert rel < 1e-5  # F(2x2,3x3) only adds/halves: a few float32 ulps
    # measured: exact (max |diff| 0, AMD EPYC)
    torch.testing.assert_close(winograd_conv3d(x, winograd_kernels(weight), bias, 1), got, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_winograd_module_replaces_only_eligible_convs_and_follows_dtype():
    assert is_winograd_eligible(nn.Conv3d(4, 4, 3, padding=1))
    assert not is_winograd_eligible(nn.Conv3d(4, 4, 3, padding=1, stride=(1, 2, 2)))
    assert not is_winograd_eligible(nn.Conv3d(4, 4, (3, 1, 1), padding=(1, 0, 0)))
    with pytest.raises(ValueError, match="3x3x3, stride 1"):
        WinogradConv3d(nn.Conv3d(4, 4, 1))
    torch.manual_seed(0)
    conv = nn.Conv3d(6, 5, 3, padding=1).eval()
    fast = WinogradConv3d(conv).double()  # kernels recomputed from the float64 weight
    x = torch.randn(1, 6, 5, 6, 6, dtype=torch.float64)
    # measured max |diff| 1.1e-15 (rel 6.1e-13) (AMD EPYC); tolerance 901x that
    torch.testing.assert_close(fast(x), conv.double()(x), rtol=0, atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # falls back to the plain convolution
        assert fast(x.float()).dtype == torch.bfloat16


def test_winograd_resnet_matches_the_folded_resnet_in_float64():
    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    model = refs.randomize(DualTrack(cfg), seed=3).double().eval()
    plain = model.local_encoder.cnn.fused_for_inference()
    # channels-last weights (as predict stores them) must still give row-major transformed kernels
    fast = model.local_encoder.cnn.fused_for_inference(winograd_min_channels=1).to(memory_format=torch.channels_last_3d)
    n_fast = sum(isinstance(m, WinogradConv3d) for m in fast.modules())
    assert n_fast == 13  # every stride-1 3x3x3 block conv: 16 block convs minus 3 strided ones
    assert not any(isinstance(m, WinogradConv3d) for m in model.local_encoder.cnn.fused_for_inference(9).modules()
                   if getattr(m, "weight", None) is not None and m.weight.shape[1] < 9)
    x = torch.rand(1, 1, 9, 32, 32, dtype=torch.float64)
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    # measured max |diff| 5.3e-15 (rel 8.7e-15) (AMD EPYC); tolerance > 1000x that
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12 * expected.abs().max().item())
    assert all(m.u.is_contiguous() for m in fast.modules() if isinstance(m, WinogradConv3d))
