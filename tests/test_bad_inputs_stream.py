"""Bad-input table for `freehand3d stream`, `replay` and `recover` (see tests/_bad_inputs.py)."""

from __future__ import annotations

import atexit
import json
import socket
from pathlib import Path

import numpy as np
import pytest

from tests._bad_inputs import Case, check_case


# a port held bound but never listening: a connection is refused, and no client can be given it as
# its own source port (a freed port can, rarely, make a TCP "self-connect" succeed)
_HELD = socket.socket()
_HELD.bind(("127.0.0.1", 0))
CLOSED = _HELD.getsockname()[1]  # nothing listens there
atexit.register(_HELD.close)


def _sequence(tmp: Path) -> None:
    from freehand3d.io import write_sweep
    from freehand3d.sweep import Sweep

    n = 4
    probe = np.tile(np.eye(4), (n, 1, 1))
    write_sweep(Sweep(np.zeros((n, 8, 10), np.uint8), timestamps=np.arange(n) / 10.0,
                      transforms={"ProbeToTracker": probe}), tmp / "seq.igs.mha")


def _calibration_without_matrix(tmp: Path) -> None:
    (tmp / "cal.json").write_text(json.dumps({"rms": 1.0}))


def _garbage_sequence(tmp: Path) -> None:
    (tmp / "bad.igs.mha").write_bytes(b"this is not a MetaImage header\n" * 3)


def _unfinished(tmp: Path) -> None:
    (tmp / "rec.igs.mha.journal").write_text('{"freehand3d_recording": 1, "frame_shape": [2, 2], "dtype": "|u1"}\n')
    (tmp / "rec.igs.mha.pixels").write_bytes(b"")


def _corrupt_journal(tmp: Path) -> None:
    (tmp / "rec.igs.mha.journal").write_text("not json\n")
    (tmp / "rec.igs.mha.pixels").write_bytes(b"\0" * 8)


def _journal_only(tmp: Path) -> None:
    (tmp / "rec.igs.mha.journal").write_text('{"freehand3d_recording": 1, "frame_shape": [2, 2], "dtype": "|u1"}\n')


def _no_complete_frame(tmp: Path) -> None:
    _unfinished(tmp)
    (tmp / "rec.igs.mha.pixels").write_bytes(b"\0\0")  # half a 2x2 frame, no journal line


def _complete(tmp: Path) -> None:
    _sequence(tmp)
    (tmp / "seq.igs.mha").rename(tmp / "rec.igs.mha")


def _garbage_checkpoint(tmp: Path) -> None:
    (tmp / "bad.pt").write_bytes(b"not a torch checkpoint" * 10)


def _npy_folder(tmp: Path) -> None:
    (tmp / "d.npy").mkdir()


TINY = str(Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt")
REC = ["--record", "{tmp}/out.igs.mha"]
S = ["stream", "--connect-timeout", "0.5"]

CASES = [
    Case("port out of range", [*S, "--port", "70000", *REC], mention=["--port", "65535"]),
    Case("port zero", [*S, "--port", "0", *REC], mention=["--port"]),
    Case("spacing zero", [*S, "--spacing", "0", "--reconstruct", "{tmp}/v.nrrd"], mention=["--spacing"]),
    Case("spacing negative", [*S, "--spacing", "-1", "--reconstruct", "{tmp}/v.nrrd"], mention=["--spacing"]),
    Case("frames zero", [*S, "--frames", "0"], mention=["--frames"]),
    Case("frames negative", [*S, "--frames", "-3", *REC], mention=["--frames"]),
    Case("frames not a number", [*S, "--frames", "many", *REC]),
    Case("duration zero", [*S, "--duration", "0", *REC], mention=["--duration"]),
    Case("duration negative", [*S, "--duration", "-5", *REC], mention=["--duration"]),
    Case("record with a wrong suffix", [*S, "--record", "{tmp}/out.txt"], mention=["--record", "out.txt"]),
    Case("record into a folder", [*S, "--record", "{tmp}"], mention=["folder"]),
    Case("reconstruct with a wrong suffix", [*S, "--reconstruct", "{tmp}/v.png"], mention=["--reconstruct", "v.png"]),
    Case("record and reconstruct the same file", [*S, "--record", "{tmp}/x.mha", "--reconstruct", "{tmp}/x.mha"],
         mention=["same file"]),
    Case("unknown method", [*S, "--method", "cubic", *REC], mention=["--method", "cubic"]),
    Case("unknown compounding", [*S, "--compounding", "median", *REC], mention=["--compounding"]),
    Case("unknown request mode", [*S, "--request", "sometimes", *REC], mention=["--request"]),
    Case("unknown live policy", [*S, "--live-policy", "drop-newest", "--reconstruct", "{tmp}/v.nrrd"],
         mention=["--live-policy"]),
    Case("image timeout zero", [*S, "--image-timeout", "0", *REC], mention=["--image-timeout"]),
    Case("stall timeout negative", [*S, "--stall-timeout", "-1", *REC], mention=["--stall-timeout"]),
    Case("live queue zero", [*S, "--live-queue", "0", "--reconstruct", "{tmp}/v.nrrd"], mention=["--live-queue"]),
    Case("calibration file missing", [*S, "--calibration", "{tmp}/nope.json", *REC], mention=["nope.json"]),
    Case("calibration without image_to_probe", [*S, "--calibration", "{tmp}/cal.json", *REC],
         setup=_calibration_without_matrix, mention=["cal.json", "image_to_probe"]),
    Case("send-volume not host:port", [*S, "--send-volume", "slicer", "--reconstruct", "{tmp}/v.nrrd"],
         mention=["host:port"]),
    Case("send-volume port out of range", [*S, "--send-volume", "localhost:99999", "--reconstruct", "{tmp}/v.nrrd"],
         mention=["65535"]),
    Case("nothing to do", [*S], mention=["nothing to do"]),
    Case("unreachable server", [*S, "--port", str(CLOSED), "--frames", "1"], mention=["cannot connect", str(CLOSED)]),
    Case("unfinished recording in the way", [*S, "--record", "{tmp}/rec.igs.mha"], setup=_unfinished,
         mention=["recover"]),
    # live tracking (checked before the model loads / the stream connects)
    Case("track checkpoint missing", [*S, "--track", "{tmp}/nope.pt"], mention=["nope.pt"]),
    Case("track checkpoint is garbage", [*S, "--track", "{tmp}/bad.pt"], setup=_garbage_checkpoint,
         mention=["bad.pt"]),
    Case("track output not .npy", [*S, "--track", TINY, "--track-output", "{tmp}/poses.csv"],
         mention=["--track-output", ".npy"]),
    Case("track emitted not .npy", [*S, "--track", TINY, "--track-emitted", "{tmp}/poses.txt"],
         mention=["--track-emitted", ".npy"]),
    Case("track output without --track", [*S, "--track-output", "{tmp}/poses.npy", *REC], mention=["--track"]),
    Case("track output and emitted the same file",
         [*S, "--track", TINY, "--track-output", "{tmp}/p.npy", "--track-emitted", "{tmp}/p.npy"],
         mention=["same file"]),
    Case("track output into a folder", [*S, "--track", TINY, "--track-output", "{tmp}/d.npy"], setup=_npy_folder,
         mention=["folder"]),
    # replay
    Case("replay missing file", ["replay", "{tmp}/nope.igs.mha"], mention=["nope.igs.mha", "not found"]),
    Case("replay port out of range", ["replay", "{tmp}/seq.igs.mha", "--port", "70000"], setup=_sequence,
         mention=["--port"]),
    Case("replay negative fps", ["replay", "{tmp}/seq.igs.mha", "--fps", "-1"], setup=_sequence, mention=["--fps"]),
    Case("replay unknown timestamps", ["replay", "{tmp}/seq.igs.mha", "--timestamps", "later"], setup=_sequence,
         mention=["--timestamps"]),
    Case("replay zero clients", ["replay", "{tmp}/seq.igs.mha", "--clients", "0"], setup=_sequence,
         mention=["--clients"]),
    Case("replay start frame past the end", ["replay", "{tmp}/seq.igs.mha", "--start-frame", "999"],
         setup=_sequence, mention=["--start-frame"]),
    Case("replay a file that is not a sequence", ["replay", "{tmp}/bad.igs.mha"], setup=_garbage_sequence,
         mention=["bad.igs.mha"]),
    Case("replay embed a frame the recording lacks", ["replay", "{tmp}/seq.igs.mha", "--embed", "Nowhere"],
         setup=_sequence, mention=["--embed", "nowhere"]),
    # recover
    Case("recover a missing recording", ["recover", "{tmp}/nope.igs.mha"], mention=["nothing to recover"]),
    Case("recover a complete recording", ["recover", "{tmp}/rec.igs.mha"], setup=_complete, mention=["complete"]),
    Case("recover with a corrupt journal", ["recover", "{tmp}/rec.igs.mha"], setup=_corrupt_journal,
         mention=["journal"]),
    Case("recover without the pixels", ["recover", "{tmp}/rec.igs.mha"], setup=_journal_only, mention=["pixels"]),
    Case("recover with no complete frame", ["recover", "{tmp}/rec.igs.mha"], setup=_no_complete_frame,
         mention=["no complete frame"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
