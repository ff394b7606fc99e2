"""Cross-cutting bad inputs: the same mistake on every command that can make it.

- an output path naming a folder, or under a file;
- ``--device cuda`` without CUDA, or a device that does not exist (one check in ``cli.main``);
- an empty ``.npz``;
- write errors: a read-only folder and a full disk, faked (the suite runs as root in CI, where
  permissions don't stop writes), and a real read-only folder when not root;
- Ctrl-C: ``freehand3d: interrupted`` and exit 130, in-process and with a real SIGINT;
- ``--version`` / ``--help`` of every command exit 0 (sanity, not counted as bad inputs).

And the count of bad-input cases over every ``tests/test_bad_inputs_*.py``.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _bad_inputs import Case, check_case, run_cli

ROOT = Path(__file__).resolve().parents[1]
PLUS = ROOT / "freehand3d" / "data" / "plus"
SPINE = str(PLUS / "SpinePhantomFreehand.igs.mha")
NN_LATE = str(PLUS / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml")
CAL = str(PLUS / "fCal_Test_Calibration_3NWires.igs.mha")
FCAL = str(PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")
CKPT = str(ROOT / "freehand3d" / "data" / "dualtrack-tiny.pt")
POINTS = "# wavelength_mm=0.1\nframe,x_mm,z_mm\n0,0.1,5.0\n"


def _folder(name):
    return lambda tmp: (tmp / name).mkdir()


def _file(name, text="x"):
    return lambda tmp: (tmp / name).write_text(text)


#: (id, args writing OUT) for commands with a file output; OUT is replaced per case
WRITERS = [
    ("convert", ["convert", SPINE, "OUT.igs.nrrd"]),
    ("reconstruct", ["reconstruct", SPINE, "--config", NN_LATE, "-o", "OUT.nrrd"]),
    ("simulate-nwire", ["simulate", "nwire", "--frames", "2", "-o", "OUT.igs.mha"]),
    ("simulate-sweep", ["simulate", "sweep", "--frames", "2", "--size", "16x16", "-o", "OUT.h5"]),
    ("ulm-render", ["ulm", "render", "{tmp}/p.csv", "-o", "OUT.png"]),
    ("calibrate", ["calibrate", CAL, "--phantom", FCAL, "-o", "OUT.json"]),  # checked before the ~26 s calibration
]


def _writer_cases():
    cases = []
    for name, args in WRITERS:
        suffix = next(a for a in args if a.startswith("OUT")).replace("OUT", "")
        setup_points = (lambda t: (t / "p.csv").write_text(POINTS)) if name == "ulm-render" else (lambda t: None)

        def folder_setup(t, s=suffix, p=setup_points):
            p(t)
            (t / f"out{s}").mkdir()

        def file_parent_setup(t, p=setup_points):
            p(t)
            (t / "afile").write_text("x")

        cases.append(Case(f"{name}-output-is-folder", [a.replace("OUT", "{tmp}/out") for a in args],
                          setup=folder_setup, mention=[f"out{suffix}"]))
        cases.append(Case(f"{name}-output-under-a-file", [a.replace("OUT", "{tmp}/afile/out") for a in args],
                          setup=file_parent_setup, mention=["afile"]))
    return cases


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


_DEVICE_COMMANDS = [
    ("reconstruct", ["reconstruct", SPINE, "--config", NN_LATE, "-o", "{tmp}/v.nrrd"]),
    ("track", ["track", SPINE, "-c", CKPT, "-o", "{tmp}/t.igs.mha"]),
    ("simulate-sweep", ["simulate", "sweep", "--frames", "2", "--size", "16x16", "-o", "{tmp}/s.h5"]),
    ("batch-reconstruct", ["batch", "reconstruct", "--csv", "{tmp}/l.csv", "--out", "{tmp}/o"]),
    ("batch-track", ["batch", "track", "--csv", "{tmp}/l.csv", "--out", "{tmp}/o", "-c", CKPT]),
    ("train", ["train", "--csv", "{tmp}/l.csv", "--out", "{tmp}/o"]),
]

DEVICE_CASES = [Case(f"{name}-cuda-without-cuda", [*args, "--device", "cuda"], mention=["--device", "cuda"])
                for name, args in _DEVICE_COMMANDS] + [
    Case(f"{name}-device-not-a-device", [*args, "--device", "gpu0"], mention=["gpu0"]) for name, args in _DEVICE_COMMANDS[:3]]

CASES = _writer_cases() + [
    Case("empty-npz-ulm-localize", ["ulm", "localize", "{tmp}/e.npz", "-o", "{tmp}/p.csv"], setup=_file("e.npz", ""), mention=["e.npz"]),
    Case("empty-npz-ulm-evaluate", ["ulm", "evaluate", "{tmp}/p.csv", "{tmp}/e.npz"],
         setup=lambda t: ((t / "e.npz").write_bytes(b""), (t / "p.csv").write_text(POINTS)), mention=["e.npz"]),
    Case("no-such-command", ["reconstrut", SPINE]),
    Case("option-before-command", ["--spacing", "1", "reconstruct"]),
]

HELP = [Case("version", ["--version"], code=0), Case("help", ["--help"], code=0)] + [
    Case(f"help-{'-'.join(cmd)}", [*cmd, "--help"], code=0)
    for cmd in (["info"], ["convert"], ["simulate", "nwire"], ["simulate", "sweep"], ["calibrate"], ["reconstruct"],
                ["track"], ["evaluate"], ["train"], ["stream"], ["replay"], ["recover"], ["demo"],
                ["ulm", "localize"], ["ulm", "render"], ["batch", "reconstruct"])]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)


@pytest.mark.skipif(not _no_cuda(), reason="this machine has CUDA")
@pytest.mark.parametrize("case", DEVICE_CASES, ids=[c.id for c in DEVICE_CASES])
def test_device(case, tmp_path):
    check_case(case, tmp_path)


@pytest.mark.parametrize("case", HELP, ids=[c.id for c in HELP])
def test_help_and_version(case, tmp_path):
    res = check_case(case, tmp_path)
    assert res.stdout.strip()


# ------------------------------------------------------------------------------ write errors

_WRITE_ARGS = {
    "convert": ["convert", SPINE, "{tmp}/o/out.igs.nrrd"],
    "reconstruct": ["reconstruct", SPINE, "--config", NN_LATE, "-o", "{tmp}/o/out.nrrd", "-q"],
    "simulate": ["simulate", "sweep", "--frames", "2", "--size", "16x16", "-o", "{tmp}/o/out.igs.mha"],
}


@pytest.mark.parametrize("command", sorted(_WRITE_ARGS))
def test_full_disk_is_one_line_and_leaves_nothing(command, tmp_path, monkeypatch):
    """A full disk, faked where every atomic write ends (the rename of the finished temp file):
    one error line naming the output, exit 2, no temp file left."""
    (tmp_path / "o").mkdir()

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    # only _atomic's rename fails: patching os.replace itself would also fail numba's cache writes
    # (a fresh clone compiles the kernels during this test)
    import types

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    fake_os.replace = full
    monkeypatch.setattr("freehand3d._atomic.os", fake_os)
    res = check_case(Case(f"{command}-disk-full", _WRITE_ARGS[command], mention=["out", "no space left"]), tmp_path)
    assert not list((tmp_path / "o").iterdir())


@pytest.mark.parametrize("command", sorted(_WRITE_ARGS))
def test_read_only_folder_is_refused_before_the_work(command, tmp_path, monkeypatch):
    """A read-only output folder, faked through os.access (root writes anywhere): refused before
    anything is read or computed."""
    (tmp_path / "o").mkdir()
    real_access = os.access
    monkeypatch.setattr("freehand3d._atomic.os.access",
                        lambda p, mode: False if Path(p) == tmp_path / "o" else real_access(p, mode))
    check_case(Case(f"{command}-read-only", _WRITE_ARGS[command], mention=["not writable"]), tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_real_read_only_folder(tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o").chmod(0o555)
    try:
        check_case(Case("convert-read-only-real", _WRITE_ARGS["convert"], mention=["not writable"]), tmp_path)
    finally:
        (tmp_path / "o").chmod(0o755)


def test_os_error_escaping_a_command_is_one_line(tmp_path, monkeypatch):
    """Any OSError that reaches cli.main (here: a permission error reading the sweep) is one line."""
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), SPINE)

    monkeypatch.setattr("freehand3d.io.read_sweep", denied)
    res = run_cli(["reconstruct", SPINE, "--config", NN_LATE, "-o", str(tmp_path / "v.nrrd")])
    assert res.code == 2 and res.exception is None
    assert res.stderr.strip() == f"freehand3d: error: {SPINE}: Permission denied"


# ------------------------------------------------------------------------------ Ctrl-C

def test_ctrl_c_in_process_prints_interrupted(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("freehand3d.io.read_sweep", interrupted)
    res = run_cli(["reconstruct", SPINE, "--config", NN_LATE, "-o", str(tmp_path / "v.nrrd")])
    assert res.code == 130 and res.exception is None
    assert res.stderr.strip().splitlines()[-1] == "freehand3d: interrupted"
    assert not list(tmp_path.iterdir())


def _stderr_until(proc, needle: str, timeout: float) -> str:
    """What ``proc`` wrote to stderr until ``needle`` appears (or it exits, or ``timeout`` s: a hang guard)."""
    import select

    fd, out = proc.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while needle.encode() not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            out += chunk
    return out.decode(errors="replace")


def test_ctrl_c_real_sigint(tmp_path):
    """A real SIGINT to a running simulation: 'interrupted', exit 130, no output file."""
    out = tmp_path / "s.igs.mha"
    # the progress bar is drawn on the stderr pipe (rich's TTY_* switches), so the SIGINT is sent once
    # a first batch of frames is done. A fixed sleep (was 6 s) landed in the imports on a loaded
    # machine (the bar appeared after 9.4 s at load average 9 on 2 cores), and a SIGINT during an
    # import can be lost in CPython's import machinery (seen once in 11 tries, in scipy's import:
    # the simulation went on); the bar's count ("610/100000") shows after every import
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "freehand3d", "simulate", "sweep", "--frames", "100000",
                             "--size", "64x64", "-o", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            env=env)
    try:
        started = _stderr_until(proc, "/100000", timeout=300)
        assert "/100000" in started, started[-2000:]
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=120)  # a hang guard
    finally:
        proc.kill()
    err = started + rest.decode(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    assert "freehand3d: interrupted" in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.is_file()]


# ------------------------------------------------------------------------------ the count

def _count_cases() -> dict[str, int]:
    counts = {}
    for path in sorted(Path(__file__).parent.glob("test_bad_inputs_*.py")):
        spec = importlib.util.spec_from_file_location(f"_count_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        seen = {}
        for value in vars(module).values():
            if isinstance(value, (list, tuple)):
                for item in value:
                    if type(item).__name__ == "Case" and getattr(item, "code", 2) != 0:  # however it was imported
                        seen[id(item)] = item
        counts[path.stem.replace("test_bad_inputs_", "")] = len(seen)
    return counts


def test_count_of_bad_input_cases():
    """Every command area has a table; the total is what issue 13 asks for (>= 200)."""
    counts = _count_cases()
    total = sum(counts.values())
    print(f"bad-input cases: {total} ({', '.join(f'{k} {v}' for k, v in counts.items())})")
    assert {"reconstruct", "simulate", "batch", "demo", "cli"} <= set(counts)
    assert all(v > 0 for v in counts.values()), counts
    assert total >= 200, counts
