"""Bad inputs of ``freehand3d demo``: refused before any step runs."""

from __future__ import annotations

import pytest

from _bad_inputs import Case, check_case

CASES = [
    Case("skip-unknown-step", ["demo", "--out", "{tmp}/d", "--skip", "foo"], mention=["--skip", "foo"]),
    Case("skip-typo", ["demo", "--out", "{tmp}/d", "--skip", "calibrate"], mention=["calibrate"]),
    Case("skip-plural", ["demo", "--out", "{tmp}/d", "--skip", "calibration,tracking"], mention=["--skip"]),
    Case("out-is-file", ["demo", "--out", "{tmp}/f"], setup=lambda t: (t / "f").write_text("x"), mention=["f", "folder"]),
    Case("out-parent-is-file", ["demo", "--out", "{tmp}/f/d"], setup=lambda t: (t / "f").write_text("x"), mention=["f"]),
    Case("unknown-option", ["demo", "--fast"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
