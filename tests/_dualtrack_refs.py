"""The DualTrack reference helpers (tests/fixtures/dualtrack/refs.py), loaded once per test session
so the official-size random weights are generated only once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load():
    if "dualtrack_refs" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "dualtrack_refs", Path(__file__).parent / "fixtures" / "dualtrack" / "refs.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["dualtrack_refs"] = module
    return sys.modules["dualtrack_refs"]


refs = _load()


def conv_case(seed, b, cin, cout, t, h, w, dtype):
    """A random channels-last (b, cin, t, h, w) input, a (cout, cin, 3, 3, 3) weight and a bias: the
    stride-1 3x3x3 convolution cases of the Winograd tests."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, cin, t, h, w, generator=gen, dtype=dtype).to(memory_format=torch.channels_last_3d)
    weight = torch.randn(cout, cin, 3, 3, 3, generator=gen, dtype=dtype)
    bias = torch.randn(cout, generator=gen, dtype=dtype)
    return x, weight, bias
