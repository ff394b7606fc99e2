"""Shared harness for the table-driven bad-input tests (``tests/test_bad_inputs_<area>.py``).

Every command must answer a user-fixable mistake with exit code 2 and one ``freehand3d: error: ...``
line on stderr (or click's own usage error for an unparsable option), never a Python traceback, and
must leave no partial output behind. Each area's test file builds a list of :class:`Case` rows and
parametrises one test over them with :func:`check_case`.

Cases run in-process through :func:`freehand3d.cli.main` (fast: no interpreter start per case);
``Case(subprocess=True)`` runs ``python -m freehand3d`` instead, for cases that need a real process.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess as _subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str
    exception: str | None = None  # formatted traceback of an exception that escaped main()


@dataclass
class Case:
    """One bad input: ``args`` for ``freehand3d`` (``{tmp}`` is replaced by the case's temp folder).

    ``setup(tmp)`` prepares input files in the temp folder; ``mention`` are substrings the error line
    must contain (case-insensitive), e.g. the file name or the option; ``code`` is the expected exit
    code (2 for a user error).
    """

    id: str
    args: Sequence[str]
    setup: Callable[[Path], None] | None = None
    mention: Sequence[str] = ()
    code: int = 2
    subprocess: bool = False
    timeout: float = 120.0
    env: dict = field(default_factory=dict)


def run_cli(args: Sequence[str], *, cwd: Path | None = None, subprocess: bool = False,
            timeout: float = 120.0, env: dict | None = None) -> CliResult:
    """Run ``freehand3d ARGS`` and capture exit code, stdout and stderr."""
    args = [str(a) for a in args]
    if subprocess:
        full_env = {**os.environ, **(env or {})}
        proc = _subprocess.run([sys.executable, "-m", "freehand3d", *args], cwd=cwd, env=full_env,
                               capture_output=True, text=True, timeout=timeout, stdin=_subprocess.DEVNULL)
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    from freehand3d import cli

    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd = sys.argv, os.getcwd()
    old_env = {k: os.environ.get(k) for k in (env or {})}
    code, exc_text = 0, None
    try:
        sys.argv = ["freehand3d", *args]
        os.environ.update(env or {})
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:  # noqa: BLE001 - anything escaping main() is a traceback for the user
                exc_text = traceback.format_exc()
                code = 1
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue(), exc_text)


def _snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def check_case(case: Case, tmp_path: Path) -> CliResult:
    """Run one case in ``tmp_path`` and assert a clean user error with no partial output."""
    if case.setup is not None:
        case.setup(tmp_path)
    before = _snapshot(tmp_path)
    args = [str(a).replace("{tmp}", str(tmp_path)) for a in case.args]
    res = run_cli(args, cwd=tmp_path, subprocess=case.subprocess, timeout=case.timeout, env=case.env)
    assert res.exception is None, f"{case.id}: exception escaped main():\n{res.exception}"
    assert "Traceback (most recent call last)" not in res.stderr + res.stdout, (
        f"{case.id}: traceback printed:\n{res.stderr[-3000:]}")
    assert res.code == case.code, f"{case.id}: exit code {res.code}, expected {case.code}; stderr:\n{res.stderr[-2000:]}"
    if case.code == 2:
        err_lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        ours = [ln for ln in err_lines if ln.startswith("freehand3d: error:")]
        usage = any("Usage:" in ln for ln in err_lines)  # click's own usage error (bad option value)
        assert ours or usage, f"{case.id}: no error line on stderr:\n{res.stderr[-2000:]}"
        if ours:
            assert len(ours) == 1, f"{case.id}: {len(ours)} error lines:\n{res.stderr}"
        text = res.stderr.lower()
        for word in case.mention:
            assert str(word).replace("{tmp}", str(tmp_path)).lower() in text, (
                f"{case.id}: error does not mention {word!r}:\n{res.stderr}")
    after = _snapshot(tmp_path)
    new = sorted(set(after) - set(before))
    if case.code != 0:
        assert not new, f"{case.id}: partial output left behind: {new}"
    return res
