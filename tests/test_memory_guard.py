"""The reconstruction memory guard tells the truth: --max-memory is GiB, the spacing a refusal
suggests is accepted under the same limit, and (slow) a real run's peak RSS is within 15 % of the
budget the guard checked (the full grid: benchmarks/bench_memory_guard.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _bad_inputs import run_cli

ROOT = Path(__file__).resolve().parents[1]
PLUS = ROOT / "freehand3d" / "data" / "plus"
SPINE = str(PLUS / "SpinePhantomFreehand.igs.mha")
NN_LATE = str(PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml")


def _calibrated_spine():
    from freehand3d.io import read_sweep
    from freehand3d.io.plus_config import read_device_set

    sweep = read_sweep(SPINE)
    sweep.image_to_probe = read_device_set(NN_LATE).transform("ImageToProbe")
    return sweep


@pytest.mark.parametrize("limit_gib", [0.05, 0.2])
def test_the_suggested_spacing_fits_the_same_limit(limit_gib):
    from freehand3d.compound.volume import reconstruct
    from freehand3d.errors import ResourceError

    sweep = _calibrated_spine()
    limit = int(limit_gib * 1024**3)
    with pytest.raises(ResourceError) as refused:
        reconstruct(sweep, spacing=0.05, max_memory=limit)
    message = str(refused.value)
    assert f"the limit is {limit_gib:.2f} GiB" in message
    suggested = float(re.search(r"spacing of at least ([0-9.e+-]+) mm", message).group(1))
    budget = {}
    # accepted (the guard passes), and not far coarser than needed: 0.9 x the suggestion is refused
    # or within 30 % of the limit (the suggestion is rounded up to 2 significant digits)
    reconstruct(sweep, spacing=suggested, max_memory=limit, budget_out=budget)
    assert budget["bytes"] <= limit
    try:
        reconstruct(sweep, spacing=suggested * 0.9, max_memory=limit, budget_out=budget)
        assert budget["bytes"] > 0.7 * limit
    except ResourceError:
        pass


def test_max_memory_is_gib_on_the_command_line(tmp_path):
    res = run_cli(["reconstruct", SPINE, "--config", NN_LATE, "-o", str(tmp_path / "v.nrrd"), "--spacing", "0.05",
                   "--max-memory", "0.5"])
    assert res.code == 2
    assert "the limit is 0.50 GiB" in res.stderr and "--max-memory" in res.stderr
    assert "GiB" in run_cli(["reconstruct", "--help"]).stdout


@pytest.mark.slow
@pytest.mark.parametrize("combo", [("nearest", "mean", "none", "0"), ("nearest", "latest", "stick:9", "1")])
def test_measured_peak_within_15_percent_of_the_budget(combo):
    """One process per point (ru_maxrss is per process): spine sweep at 0.3 mm (7.5 Mvoxel)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory_guard.py"), "--child", "0.3", *combo],
                          capture_output=True, text=True, timeout=900, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    # measured spread over the benchmark grid: see docs/compound.md "Memory guard"
    assert 0.85 <= row["budget"] / row["peak"] <= 1.15, row
