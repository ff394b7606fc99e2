"""Bad inputs of ``freehand3d batch reconstruct|track|evaluate``: problems of the whole batch (the
sweep list, the options, the output folder, the scheduler) are one error line and exit 2 before any
sweep is processed. (A problem of one sweep is a 'failed' row of the report: tests/test_batch.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from _bad_inputs import Case, check_case

PLUS = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"


def _write(name: str, content: str | bytes):
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def _list(text: str = "sweep_id,path\ns1,s1.igs.mha\n"):
    def setup(tmp: Path) -> None:
        (tmp / "sweeps.csv").write_text(text)
        (tmp / "s1.igs.mha").write_bytes((PLUS / "SpinePhantomFreehand.igs.mha").read_bytes()[:64])
    return setup


R = ["batch", "reconstruct", "--csv", "{tmp}/sweeps.csv", "--scheduler", "none"]
T = ["batch", "track", "--csv", "{tmp}/sweeps.csv", "--scheduler", "none"]
E = ["batch", "evaluate", "--csv", "{tmp}/sweeps.csv", "--scheduler", "none"]

CASES = [
    # the sweep list
    Case("csv-missing", [*R, "--out", "{tmp}/o"], mention=["sweeps.csv"]),
    Case("csv-empty", [*R, "--out", "{tmp}/o"], setup=_write("sweeps.csv", ""), mention=["sweeps.csv"]),
    Case("csv-not-utf8", [*R, "--out", "{tmp}/o"], setup=_write("sweeps.csv", b"sweep_id,path\n\xff\xfe,\x80\n"), mention=["sweeps.csv"]),
    Case("csv-no-path-column", [*R, "--out", "{tmp}/o"], setup=_list("sweep_id,file\ns1,a.igs.mha\n"), mention=["path"]),
    Case("csv-no-id-column", [*R, "--out", "{tmp}/o"], setup=_list("name,path\ns1,a.igs.mha\n"), mention=["sweep_id"]),
    Case("csv-duplicate-id", [*R, "--out", "{tmp}/o"], setup=_list("sweep_id,path\ns1,s1.igs.mha\ns1,s1.igs.mha\n"), mention=["s1"]),
    Case("csv-unsafe-id", [*R, "--out", "{tmp}/o"], setup=_list("sweep_id,path\n../evil,s1.igs.mha\n"), mention=["evil"]),
    Case("csv-empty-path", [*R, "--out", "{tmp}/o"], setup=_list("sweep_id,path\ns1,\n"), mention=["sweeps.csv"]),
    Case("csv-header-only", [*R, "--out", "{tmp}/o"], setup=_list("sweep_id,path\n"), mention=["no rows"]),
    Case("csv-is-folder", ["batch", "reconstruct", "--csv", "{tmp}", "--out", "{tmp}/o", "--scheduler", "none"]),
    # the output folder
    Case("out-is-file", [*R, "--out", "{tmp}/afile"], setup=lambda t: (_list()(t), (t / "afile").write_text("x")), mention=["afile"]),
    Case("out-parent-is-file", [*R, "--out", "{tmp}/afile/o"], setup=lambda t: (_list()(t), (t / "afile").write_text("x")), mention=["afile"]),
    # reconstruct options
    Case("spacing-zero", [*R, "--out", "{tmp}/o", "--spacing", "0"], setup=_list(), mention=["--spacing"]),
    Case("spacing-nan", [*R, "--out", "{tmp}/o", "--spacing", "nan"], setup=_list(), mention=["--spacing"]),
    Case("unknown-method", [*R, "--out", "{tmp}/o", "--method", "cubic"], setup=_list(), mention=["cubic"]),
    Case("unknown-compounding", [*R, "--out", "{tmp}/o", "--compounding", "median"], setup=_list(), mention=["median"]),
    Case("config-missing", [*R, "--out", "{tmp}/o", "--config", "{tmp}/none.xml"], setup=_list(), mention=["none.xml"]),
    Case("bad-pose-name", [*R, "--out", "{tmp}/o", "--image-to-reference", "no pose"], setup=_list(), mention=["--image-to-reference"]),
    Case("suffix-unknown", [*R, "--out", "{tmp}/o", "--suffix", ".png"], setup=_list(), mention=[".png"]),
    Case("workers-zero", [*R, "--out", "{tmp}/o", "--workers", "0"], setup=_list()),
    Case("bad-scheduler-address", ["batch", "reconstruct", "--csv", "{tmp}/sweeps.csv", "--out", "{tmp}/o",
                                   "--scheduler", "tcp://127.0.0.1:1"], setup=_list(), mention=["scheduler"], timeout=120),
    Case("unknown-split", [*R, "--out", "{tmp}/o", "--split", "holiday"], setup=_list("sweep_id,path,split\ns1,s1.igs.mha,train\n"), mention=["holiday"]),
    # track / evaluate
    Case("track-checkpoint-missing", [*T, "--out", "{tmp}/o", "-c", "{tmp}/none.pt"], setup=_list(), mention=["none.pt"]),
    Case("track-no-checkpoint", [*T, "--out", "{tmp}/o"], setup=_list()),
    Case("evaluate-predictions-missing", [*E, "--out", "{tmp}/o", "--predictions", "{tmp}/nope"], setup=_list(), mention=["nope"]),
    Case("evaluate-predictions-is-file", [*E, "--out", "{tmp}/o", "--predictions", "{tmp}/sweeps.csv"], setup=_list(), mention=["sweeps.csv"]),
    Case("track-suffix-volume", [*T, "--out", "{tmp}/o", "-c", "{tmp}/s1.igs.mha", "--suffix", ".png"], setup=_list(), mention=[".png"]),
    Case("no-operation", ["batch", "calibrate", "--csv", "x"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
