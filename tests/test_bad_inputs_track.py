"""Bad inputs of the tracking commands (``track``, ``evaluate``, ``train``): exit 2, one error line
naming the file or option, no traceback, no partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _bad_inputs import Case, check_case

TINY = str(Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt")


def _sweep(name: str, n: int = 3, shape=(480, 640), poses: bool = True, dtype=np.uint8):
    def setup(tmp: Path) -> None:
        from freehand3d.io import write_sweep
        from freehand3d.sweep import Sweep

        rng = np.random.default_rng(0)
        frames = rng.integers(0, 200, (n, *shape)).astype(dtype)
        transforms = {}
        if poses:
            mats = np.tile(np.eye(4), (n, 1, 1))
            mats[:, 2, 3] = np.arange(n) * 0.3
            transforms = {"ImageToReference": mats @ np.diag([0.2, 0.2, 1.0, 1.0])}
        write_sweep(Sweep(frames=frames, spacing=(0.2, 0.2), timestamps=np.arange(n) * 0.05, transforms=transforms),
                    tmp / name)
    return setup


def _write(name: str, content, binary: bool = False):
    def setup(tmp: Path) -> None:
        if binary:
            (tmp / name).write_bytes(content)
        else:
            (tmp / name).write_text(content)
    return setup


def _both(*setups):
    def setup(tmp: Path) -> None:
        for s in setups:
            s(tmp)
    return setup


def _h5(tmp: Path) -> None:
    import h5py

    with h5py.File(tmp / "s1.h5", "w") as f:
        f["images"] = np.zeros((8, 48, 64), np.uint8)
        f["tracking"] = np.tile(np.eye(4), (8, 1, 1))


def _train(*extra):
    return ["train", "--csv", "{tmp}/list.csv", "--out", "{tmp}/out", "--epochs", "1", *extra]


SWEEP = _sweep("s.igs.mha")
NO_CUDA = not torch.cuda.is_available()

CASES = [
    # ---------------------------------------------------------------- track
    Case("track-missing-sweep", ["track", "{tmp}/none.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha"],
         mention=["none.igs.mha"]),
    Case("track-sweep-not-a-sweep", ["track", "{tmp}/bad.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha"],
         setup=_write("bad.igs.mha", "this is not a meta image\n"), mention=["bad.igs.mha"]),
    Case("track-sweep-unknown-extension", ["track", "{tmp}/s.txt", "-c", TINY, "-o", "{tmp}/o.igs.mha"],
         setup=_write("s.txt", "x"), mention=["s.txt"]),
    Case("track-missing-checkpoint", ["track", "{tmp}/s.igs.mha", "-c", "{tmp}/none.pt", "-o", "{tmp}/o.igs.mha"],
         setup=SWEEP, mention=["none.pt"]),
    Case("track-checkpoint-garbage", ["track", "{tmp}/s.igs.mha", "-c", "{tmp}/bad.pt", "-o", "{tmp}/o.igs.mha"],
         setup=_both(SWEEP, _write("bad.pt", b"\x00\x01garbage" * 10, binary=True)), mention=["bad.pt"]),
    Case("track-checkpoint-empty", ["track", "{tmp}/s.igs.mha", "-c", "{tmp}/empty.pt", "-o", "{tmp}/o.igs.mha"],
         setup=_both(SWEEP, _write("empty.pt", b"", binary=True)), mention=["empty.pt"]),
    Case("track-checkpoint-is-text", ["track", "{tmp}/s.igs.mha", "-c", "{tmp}/ck.pt", "-o", "{tmp}/o.igs.mha"],
         setup=_both(SWEEP, _write("ck.pt", "epoch,loss\n1,0.5\n")), mention=["ck.pt"]),
    Case("track-checkpoint-is-a-folder", ["track", "{tmp}/s.igs.mha", "-c", "{tmp}", "-o", "{tmp}/o.igs.mha"],
         setup=SWEEP),
    Case("track-unknown-precision", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                     "--precision", "fp16"], setup=SWEEP, mention=["--precision", "fp16"]),
    Case("track-unknown-kernel", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                  "--kernel", "fft"], setup=SWEEP, mention=["--kernel", "fft"]),
    Case("track-zero-threads", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha", "--threads", "0"],
         setup=SWEEP, mention=["--threads"]),
    Case("track-unknown-device", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                  "--device", "tpu"], setup=SWEEP, mention=["--device", "tpu"]),
    Case("track-unknown-preset", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                  "--preset", "dualtrack-2099"], setup=SWEEP, mention=["dualtrack-2099"]),
    Case("track-preset-does-not-fit-checkpoint", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                                  "--preset", "dualtrack-2024"], setup=SWEEP, mention=["dualtrack-tiny.pt"]),
    Case("track-one-frame", ["track", "{tmp}/one.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha", "--threads", "1"],
         setup=_sweep("one.igs.mha", n=1), mention=["one.igs.mha", "2 frames"]),
    Case("track-wrong-frame-size", ["track", "{tmp}/small.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha"],
         setup=_sweep("small.igs.mha", shape=(240, 320)), mention=["small.igs.mha", "640"]),
    Case("track-bad-to-uint8", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                "--to-uint8", "gamma"], setup=SWEEP, mention=["gamma"]),
    Case("track-bad-window", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                              "--to-uint8", "window", "--window", "low,high"], setup=SWEEP, mention=["--window"]),
    Case("track-output-unknown-format", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.xyz",
                                         "--threads", "1"], setup=SWEEP, mention=["o.xyz"]),
    # outputs checked before the model runs
    Case("track-output-is-folder", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha"],
         setup=_both(SWEEP, lambda t: (t / "o.igs.mha").mkdir()), mention=["o.igs.mha", "folder"]),
    Case("track-output-under-a-file", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/afile/o.igs.mha"],
         setup=_both(SWEEP, lambda t: (t / "afile").write_text("x")), mention=["afile"]),
    Case("track-output-overwrites-input", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/s.igs.mha"],
         setup=SWEEP, mention=["s.igs.mha", "overwrite"]),
    Case("track-plot-not-png", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                "--plot", "{tmp}/traj.pdf"], setup=SWEEP, mention=["traj.pdf", ".png"]),
    Case("track-plot-is-folder", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                  "--plot", "{tmp}/p.png"], setup=_both(SWEEP, lambda t: (t / "p.png").mkdir()),
         mention=["p.png", "folder"]),
    # ---------------------------------------------------------------- evaluate
    Case("evaluate-missing-prediction", ["evaluate", "{tmp}/none.igs.mha", "{tmp}/s.igs.mha"], setup=SWEEP,
         mention=["none.igs.mha"]),
    Case("evaluate-missing-truth", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/none.igs.mha"], setup=SWEEP,
         mention=["none.igs.mha"]),
    Case("evaluate-frame-count-differs", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/long.igs.mha"],
         setup=_both(SWEEP, _sweep("long.igs.mha", n=5)), mention=["long.igs.mha"]),
    Case("evaluate-truth-without-poses", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/np.igs.mha"],
         setup=_both(SWEEP, _sweep("np.igs.mha", poses=False)), mention=["np.igs.mha"]),
    Case("evaluate-unknown-world", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/s.igs.mha", "--world", "Mars"],
         setup=SWEEP, mention=["Mars"]),
    Case("evaluate-missing-landmarks", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/s.igs.mha", "--landmarks",
                                        "{tmp}/lm.csv"], setup=SWEEP, mention=["lm.csv"]),
    Case("evaluate-landmarks-wrong-columns", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/s.igs.mha", "--landmarks",
                                              "{tmp}/lm.csv"], setup=_both(SWEEP, _write("lm.csv", "1,2\n3,4\n")),
         mention=["lm.csv"]),
    Case("evaluate-landmarks-not-numbers", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/s.igs.mha", "--landmarks",
                                            "{tmp}/lm.csv"], setup=_both(SWEEP, _write("lm.csv", "frame,x,y\na,b,c\n")),
         mention=["lm.csv"]),
    Case("evaluate-landmarks-non-utf8", ["evaluate", "{tmp}/s.igs.mha", "{tmp}/s.igs.mha", "--landmarks",
                                         "{tmp}/lm.csv"],
         setup=_both(SWEEP, _write("lm.csv", "1,2,3\n\xff\xfe,1,2\n".encode("latin-1"), binary=True)), mention=["lm.csv"]),
    # ---------------------------------------------------------------- train
    Case("train-missing-csv", _train(), mention=["list.csv"]),
    Case("train-csv-not-utf8", _train(), setup=_write("list.csv", "sweep_id,path,split\n\xe9t\xe9,s1.h5,train\n"
                                                      .encode("latin-1"), binary=True), mention=["list.csv"]),
    Case("train-csv-missing-column", _train(), setup=_write("list.csv", "id,path\n1,s1.h5\n"),
         mention=["list.csv", "split"]),
    Case("train-csv-missing-h5", _train(), setup=_write("list.csv", "sweep_id,path,split\na,none.h5,train\n"),
         mention=["list.csv", "none.h5"]),
    Case("train-csv-bad-split", _train(), setup=_both(_h5, _write("list.csv", "sweep_id,path,split\na,s1.h5,holdout\n")),
         mention=["list.csv", "holdout"]),
    Case("train-csv-empty", _train(), setup=_write("list.csv", ""), mention=["list.csv"]),
    Case("train-unknown-stage", _train("--stage", "pretrain"), mention=["--stage", "pretrain"]),
    Case("train-init-garbage", _train("--init", "{tmp}/bad.pt"),
         setup=_both(_h5, _write("list.csv", "sweep_id,path,split\na,s1.h5,train\n"),
                     _write("bad.pt", b"nonsense" * 8, binary=True)), mention=["bad.pt"]),
    Case("train-zero-epochs", ["train", "--csv", "{tmp}/list.csv", "--out", "{tmp}/out", "--epochs", "0"]),
]
if NO_CUDA:
    CASES += [
        Case("track-cuda-without-cuda", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                         "--device", "cuda"], setup=SWEEP, mention=["--device", "cuda"]),
        Case("track-cuda-index-without-cuda", ["track", "{tmp}/s.igs.mha", "-c", TINY, "-o", "{tmp}/o.igs.mha",
                                               "--device", "cuda:3"], setup=SWEEP, mention=["--device"]),
        Case("train-cuda-without-cuda", _train("--device", "cuda"),
             setup=_both(_h5, _write("list.csv", "sweep_id,path,split\na,s1.h5,train\n")), mention=["cuda"]),
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
