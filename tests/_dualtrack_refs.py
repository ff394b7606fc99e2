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
