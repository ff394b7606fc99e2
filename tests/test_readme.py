"""The README can't rot: its Python snippets run, its Quickstart commands are what CI runs, the
demo command works on the bundled data, and every ``freehand3d ...`` line names real commands and
options (the calibrate line is run on the bundled recordings)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from _bad_inputs import run_cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PLUS = ROOT / "freehand3d" / "data" / "plus"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _quickstart_commands() -> list[str]:
    quick = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_readme_has_python_snippets_and_two_quickstart_commands():
    assert _blocks("python"), "README lost its Python API snippet"
    assert len(_quickstart_commands()) == 2


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_snippet_runs(index, monkeypatch):
    """Run in the repository root (the snippets use paths relative to a clone)."""
    monkeypatch.chdir(ROOT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_blocks("python")[index], f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
    assert out.getvalue().strip(), "the snippet prints what it shows"


def _steps(command: str) -> list[list[str]]:
    return [shlex.split(part) for part in command.split("&&")]


def _ci_steps() -> list[list[str]]:
    steps = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "set ", "cd ", "export ")):
            steps.append([tok for tok in shlex.split(line) if tok != "-q"])  # CI is quieter, same steps
    return steps


def test_readme_test_command_is_what_ci_runs():
    """Quickstart step 2 (set up + run the tests) is exactly the sequence .ci/run executes (not run
    here: it would run the suite inside the suite)."""
    readme = [[tok for tok in step if tok != "-q"] for step in _steps(_quickstart_commands()[1])]
    assert readme == _ci_steps()


def test_readme_demo_command_sets_up_like_ci_and_runs_the_demo(tmp_path):
    """Quickstart step 1: the same setup as CI, then ``freehand3d demo --out DIR``, run here on the
    bundled data like tests/test_demo.py does (the reconstruction step compared voxel for voxel with
    PLUS's reference; the full demo is the slow test in test_demo.py)."""
    steps = _steps(_quickstart_commands()[0])
    setup = [[tok for tok in step if tok != "-q"] for step in steps[:-1]]
    assert setup == _ci_steps()[:-1]
    demo = steps[-1]
    assert Path(demo[0]).name == "freehand3d" and demo[1] == "demo" and "--out" in demo, demo
    args = demo[1:]
    args[args.index("--out") + 1] = str(tmp_path / "demo-out")
    res = run_cli([*args, "--skip", "calibration", "--skip", "tracking", "--skip", "ulm"])
    assert res.code == 0 and res.exception is None, res.stderr + (res.exception or "")
    report = (tmp_path / "demo-out" / "report.md").read_text()
    assert "| voxels_equal_pct | 100.000 |" in report


def _command_lines(optional: bool = True) -> list[list[str]]:
    """Every ``freehand3d ...`` line of the README's command block, as tokens.

    ``optional=True`` keeps the options shown in ``[...]`` (to check they exist); ``optional=False``
    drops them (the line as a user first types it).
    """
    lines = []
    for block in _blocks("text") + _blocks("bash"):
        block = re.sub(r"\\\n\s*", " ", block)  # shell line continuations
        for line in block.splitlines():
            code = line.split("#", 1)[0].strip()
            if code.startswith("freehand3d "):
                if not optional:
                    code = re.sub(r"\[[^\]]*\]", " ", code)
                lines.append(shlex.split(code.replace("[", " ").replace("]", " ").replace("|", " ")))
    return lines


def _click_command(words: list[str]):
    from typer.main import get_command

    from freehand3d.cli import app

    cmd = get_command(app)
    used = 0
    for word in words:
        sub = getattr(cmd, "commands", {}).get(word)
        if sub is None:
            break
        cmd, used = sub, used + 1
    return cmd, used


def test_every_readme_command_line_names_real_commands_and_options():
    lines = _command_lines()
    assert len(lines) >= 10
    for tokens in lines:
        cmd, used = _click_command(tokens[1:])
        assert used >= 1, f"unknown command in README: {' '.join(tokens)}"
        known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for tok in tokens[1 + used:]:
            if tok.startswith("-") and tok not in ("-", "--"):
                assert tok.split("=")[0] in known, f"README: {tok} is not an option of {' '.join(tokens[:1 + used])}"


def test_readme_calibrate_line_runs_on_the_bundled_recordings(tmp_path):
    (line,) = [t for t in _command_lines(optional=False) if t[1] == "calibrate"]
    subst = {"CAL.igs.mha": PLUS / "fCal_Test_Calibration_3NWires.igs.mha",
             "VAL.igs.mha": PLUS / "fCal_Test_Validation_3NWires.igs.mha",
             "DeviceSet.xml": PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml",
             "result.json": tmp_path / "result.json"}
    args = [str(subst.get(tok, tok)) for tok in line[1:]]
    res = run_cli(args, cwd=tmp_path)
    assert res.code == 0 and res.exception is None, res.stderr[-2000:] + (res.exception or "")
    assert (tmp_path / "result.json").is_file()


def test_ci_script_is_executable_and_uses_the_pinned_cpu_torch():
    ci = ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    assert "torch==2.13.0" in ci.read_text()
