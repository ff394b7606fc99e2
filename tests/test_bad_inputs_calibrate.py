"""Bad inputs of the calibration commands (``calibrate``, ``temporal-calibrate``,
``pivot-calibrate``, ``register-phantom``, ``segment``): exit 2, one error line naming the file or
option, no traceback, no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _bad_inputs import Case, check_case

PLUS = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
VIDEO = str(PLUS / "temporal" / "WaterTankBottomTranslationVideoBuffer.igs.mha")
TRACKER = str(PLUS / "temporal" / "WaterTankBottomTranslationTrackerBuffer-trimmed.igs.mha")
LANDMARKS = str(PLUS / "phantom-registration" / "EightLandmarkPointsTrackedForPhantomRegistration.igs.mha")
LANDMARK_SET = str(PLUS / "phantom-registration" / "PlusDeviceSet_fCal_Sim_RecordPhantomLandmarks.xml")
PIVOT_SET = str(PLUS / "phantom-registration" / "PlusDeviceSet_fCal_Sim_PivotCalibration.xml")
VLCUS = str(PLUS / "segmentation" / "SegmentationTest_VLCUS_RandomStepperMotionData2.igs.mha")
VLCUS_SET = str(PLUS / "segmentation" / "PlusDeviceSet_iCal_CalibrationOnly_VLCUS_FrameGrabber.xml")
CAL = str(PLUS / "fCal_Test_Calibration_3NWires.igs.mha")
CAL_SET = str(PLUS / "PlusDeviceSet_fCal_Sim_SpatialCalibration_1.2.xml")


def _write(name: str, content: str):
    def setup(tmp: Path) -> None:
        (tmp / name).write_text(content)
    return setup


def _stylus_file(name: str, poses: np.ndarray, times=None):
    def setup(tmp: Path) -> None:
        from freehand3d.io.plus_sequence import write_plus_sequence
        from freehand3d.sweep import Sweep

        n = len(poses)
        ref = np.tile(np.eye(4), (n, 1, 1))
        t = np.arange(n) * 0.05 if times is None else times
        write_plus_sequence(Sweep(frames=np.zeros((n, 0, 0), np.uint8), timestamps=t,
                                  transforms={"StylusToTracker": poses, "ReferenceToTracker": ref}), tmp / name)
    return setup


def _shifted_tracker(tmp: Path) -> None:
    from freehand3d.io.plus_sequence import read_plus_sequence, write_plus_sequence

    sweep = read_plus_sequence(TRACKER)
    sweep.timestamps = sweep.timestamps + 1000.0  # another session
    write_plus_sequence(sweep, tmp / "late.igs.mha")


def _pivoting(tmp: Path) -> None:
    from freehand3d.simulate.stylus import plus_fake_pivot_poses

    _stylus_file("pivot.igs.mha", plus_fake_pivot_poses(60, 0.0, seed=1)[0])(tmp)


def _config_without_tip(tmp: Path) -> None:
    text = Path(LANDMARK_SET).read_text()
    start = text.index('<Transform From="StylusTip"')
    end = text.index("/>", start) + 2
    (tmp / "notip.xml").write_text(text[:start] + text[end:])


STATIC = np.tile(np.eye(4), (40, 1, 1))
STATIC[:, :3, 3] = [10.0, 20.0, 30.0]

CASES = [
    # temporal-calibrate
    Case("temporal-missing-video", ["temporal-calibrate", "{tmp}/nope.igs.mha", "--tracker", TRACKER, "-o", "{tmp}/l.json"],
         mention=["nope.igs.mha", "not found"]),
    Case("temporal-missing-tracker", ["temporal-calibrate", VIDEO, "--tracker", "{tmp}/none.igs.mha", "-o", "{tmp}/l.json"],
         mention=["none.igs.mha"]),
    Case("temporal-swapped-recordings", ["temporal-calibrate", TRACKER, "--tracker", VIDEO, "-o", "{tmp}/l.json"],
         mention=["tracker-only", "Tracker"]),
    Case("temporal-tracker-and-phantom", ["temporal-calibrate", CAL, "--tracker", TRACKER, "--phantom", CAL_SET,
                                          "-o", "{tmp}/l.json"], mention=["--tracker"]),
    Case("temporal-bad-polarity", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "--polarity", "up",
                                   "-o", "{tmp}/l.json"], mention=["--polarity"]),
    Case("temporal-zero-max-lag", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "--max-lag", "0",
                                   "-o", "{tmp}/l.json"], mention=["--max-lag"]),
    Case("temporal-clip-three-numbers", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "--clip", "1", "--clip", "2",
                                         "--clip", "3", "-o", "{tmp}/l.json"], mention=["--clip"]),
    Case("temporal-output-is-folder", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "-o", "{tmp}"],
         mention=["folder"]),
    Case("temporal-missing-config", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "--config", "{tmp}/set.xml",
                                     "-o", "{tmp}/l.json"], mention=["set.xml"]),
    Case("temporal-bad-clip-in-config", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "--config", "{tmp}/set.xml",
                                         "-o", "{tmp}/l.json"],
         setup=_write("set.xml", '<PlusConfiguration><vtkPlusTemporalCalibrationAlgo ClipRectangleOrigin="a b" '
                                 'ClipRectangleSize="10 10"/></PlusConfiguration>'),
         mention=["set.xml", "ClipRectangle"]),
    Case("temporal-tracker-without-probe", ["temporal-calibrate", VIDEO, "--tracker", LANDMARKS, "-o", "{tmp}/l.json"],
         mention=["ProbeToTracker", "EightLandmark"]),
    Case("temporal-not-a-sequence", ["temporal-calibrate", "{tmp}/v.igs.mha", "--tracker", TRACKER, "-o", "{tmp}/l.json"],
         setup=_write("v.igs.mha", "hello\n"), mention=["v.igs.mha"]),
    Case("temporal-no-time-overlap", ["temporal-calibrate", VIDEO, "--tracker", "{tmp}/late.igs.mha",
                                      "-o", "{tmp}/l.json"], setup=_shifted_tracker, mention=["overlap", "late.igs.mha"]),
    Case("temporal-nwire-on-tracker-only", ["temporal-calibrate", TRACKER, "--phantom", CAL_SET, "-o", "{tmp}/l.json"],
         mention=["tracker-only"]),
    # pivot-calibrate
    Case("pivot-missing", ["pivot-calibrate", "{tmp}/nope.igs.mha", "-o", "{tmp}/p.json"], mention=["nope.igs.mha"]),
    Case("pivot-bad-method", ["pivot-calibrate", LANDMARKS, "--method", "best", "-o", "{tmp}/p.json"],
         mention=["--method"]),
    Case("pivot-unknown-stylus", ["pivot-calibrate", VLCUS, "-o", "{tmp}/p.json"],
         mention=["StylusToReference", "ToolToTracker"]),
    Case("pivot-stylus-not-a-transform", ["pivot-calibrate", LANDMARKS, "--stylus", "Stylus", "-o", "{tmp}/p.json"],
         mention=["--stylus"]),
    Case("pivot-plus-config-without-config", ["pivot-calibrate", LANDMARKS, "--plus-config", "{tmp}/o.xml",
                                              "-o", "{tmp}/p.json"], mention=["--config"]),
    Case("pivot-negative-threshold", ["pivot-calibrate", LANDMARKS, "--threshold-mm", "-1", "-o", "{tmp}/p.json"],
         mention=["--threshold-mm"]),
    Case("pivot-stylus-never-turns", ["pivot-calibrate", "{tmp}/still.igs.mha", "-o", "{tmp}/p.json"],
         setup=_stylus_file("still.igs.mha", STATIC), mention=["turns", "still.igs.mha"]),
    Case("pivot-output-is-folder", ["pivot-calibrate", LANDMARKS, "-o", "{tmp}"], mention=["folder"]),
    Case("pivot-missing-config", ["pivot-calibrate", LANDMARKS, "--config", "{tmp}/set.xml", "--plus-config",
                                  "{tmp}/o.xml", "-o", "{tmp}/p.json"], mention=["set.xml"]),
    # register-phantom
    Case("register-missing-config", ["register-phantom", LANDMARKS, "--config", "{tmp}/set.xml", "-o", "{tmp}/r.json"],
         mention=["set.xml"]),
    Case("register-config-one-landmark", ["register-phantom", LANDMARKS, "--config", VLCUS_SET, "-o", "{tmp}/r.json"],
         mention=["landmark"]),
    Case("register-config-without-landmarks", ["register-phantom", LANDMARKS, "--config", PIVOT_SET,
                                               "-o", "{tmp}/r.json"], mention=["Landmarks"]),
    Case("register-no-stylus-calibration", ["register-phantom", LANDMARKS, "--config", "{tmp}/notip.xml",
                                            "-o", "{tmp}/r.json"], setup=_config_without_tip,
         mention=["StylusTipToStylus", "pivot-calibrate"]),
    Case("register-bad-stylus-json", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--stylus-calibration",
                                      "{tmp}/p.json", "-o", "{tmp}/r.json"],
         setup=_write("p.json", json.dumps({"stylus_tip_to_stylus": [[1, 0], [0, 1]]})), mention=["p.json"]),
    Case("register-too-few-frames", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--landmark-frame", "10",
                                     "--landmark-frame", "20", "-o", "{tmp}/r.json"], mention=["--landmark-frames"]),
    Case("register-frame-out-of-range", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET,
                                         *[a for f in (1, 2, 3, 4, 5, 6, 7, 5000) for a in ("--landmark-frame", str(f))],
                                         "-o", "{tmp}/r.json"], mention=["5000"]),
    Case("register-bad-estimate", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--estimate", "median",
                                   "-o", "{tmp}/r.json"], mention=["--estimate"]),
    Case("register-bad-detector", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--detect-landmarks",
                                   "--detector", "plus2014", "-o", "{tmp}/r.json"], mention=["--detector"]),
    Case("register-no-landmarks-touched", ["register-phantom", "{tmp}/pivot.igs.mha", "--config", LANDMARK_SET,
                                           "--detect-landmarks", "-o", "{tmp}/r.json"], setup=_pivoting,
         mention=["detected", "pivot.igs.mha"]),
    Case("register-detect-and-frames", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--detect-landmarks",
                                        "--landmark-frame", "10", "-o", "{tmp}/r.json"],
         mention=["--detect-landmarks", "--landmark-frame"]),
    # segment
    Case("segment-missing", ["segment", "{tmp}/nope.igs.mha", "--config", VLCUS_SET, "-o", "{tmp}/s.json"],
         mention=["nope.igs.mha"]),
    Case("segment-bad-detection", ["segment", VLCUS, "--config", VLCUS_SET, "--detection", "canny", "-o", "{tmp}/s.json"],
         mention=["--detection"]),
    Case("segment-config-without-phantom", ["segment", VLCUS, "--config", PIVOT_SET, "-o", "{tmp}/s.json"],
         mention=["PhantomDefinition"]),
    Case("segment-baseline-not-testresults", ["segment", VLCUS, "--config", VLCUS_SET, "--baseline", VLCUS_SET,
                                              "-o", "{tmp}/s.json"], mention=["TestResults"]),
    Case("segment-tracker-only", ["segment", TRACKER, "--config", VLCUS_SET, "-o", "{tmp}/s.json"],
         mention=["tracker-only"]),
    # apply-lag
    Case("apply-lag-no-lag", ["apply-lag", TRACKER, "-o", "{tmp}/o.igs.mha"], mention=["--lag"]),
    Case("apply-lag-both", ["apply-lag", TRACKER, "--lag", "0.1", "--lag-json", "{tmp}/l.json", "-o", "{tmp}/o.igs.mha"],
         mention=["--lag-json"]),
    Case("apply-lag-bad-json", ["apply-lag", TRACKER, "--lag-json", "{tmp}/l.json", "-o", "{tmp}/o.igs.mha"],
         setup=_write("l.json", '{"lag": 1}'), mention=["l.json", "tracker_lag_s"]),
    Case("apply-lag-overwrite-input", ["apply-lag", "{tmp}/t.igs.mha", "--lag", "0.1", "-o", "{tmp}/t.igs.mha"],
         setup=_write("t.igs.mha", "x"), mention=["overwrite"]),
    Case("apply-lag-missing", ["apply-lag", "{tmp}/nope.igs.mha", "--lag", "0.1", "-o", "{tmp}/o.igs.mha"],
         mention=["nope.igs.mha"]),
    # outputs checked before any work (calibrate with these inputs would otherwise run ~26 s first)
    Case("calibrate-output-is-folder", ["calibrate", CAL, "--phantom", CAL_SET, "-o", "{tmp}/c.json"],
         setup=lambda t: (t / "c.json").mkdir(), mention=["c.json", "folder"]),
    Case("calibrate-output-under-a-file", ["calibrate", CAL, "--phantom", CAL_SET, "-o", "{tmp}/afile/c.json"],
         setup=_write("afile", "x"), mention=["afile", "not a folder"]),
    Case("calibrate-output-overwrites-recording", ["calibrate", "{tmp}/cal.igs.mha", "--phantom", CAL_SET,
                                                   "-o", "{tmp}/cal.igs.mha"],
         setup=_write("cal.igs.mha", "x"), mention=["cal.igs.mha", "overwrite"]),
    Case("calibrate-plus-config-without-device-set", ["calibrate", CAL, "--phantom", "fcal-1.2", "--plus-config",
                                                      "{tmp}/o.xml", "-o", "{tmp}/c.json"],
         mention=["--plus-config", "device set"]),
    Case("calibrate-plus-config-is-folder", ["calibrate", CAL, "--phantom", CAL_SET, "--plus-config", "{tmp}/o.xml",
                                             "-o", "{tmp}/c.json"],
         setup=lambda t: (t / "o.xml").mkdir(), mention=["o.xml", "folder"]),
    Case("calibrate-tfm-wrong-extension", ["calibrate", CAL, "--phantom", CAL_SET, "--tfm", "{tmp}/probe.json",
                                           "-o", "{tmp}/c.json"], mention=["probe.json", ".tfm"]),
    Case("calibrate-tfm-under-a-file", ["calibrate", CAL, "--phantom", CAL_SET, "--tfm", "{tmp}/afile/p.tfm",
                                        "-o", "{tmp}/c.json"], setup=_write("afile", "x"), mention=["afile"]),
    Case("calibrate-overlay-is-a-file", ["calibrate", CAL, "--phantom", CAL_SET, "--overlay", "{tmp}/ov",
                                         "-o", "{tmp}/c.json"], setup=_write("ov", "x"), mention=["ov", "not a folder"]),
    Case("temporal-output-under-a-file", ["temporal-calibrate", VIDEO, "--tracker", TRACKER, "-o", "{tmp}/afile/l.json"],
         setup=_write("afile", "x"), mention=["afile"]),
    Case("pivot-plus-config-is-folder", ["pivot-calibrate", LANDMARKS, "--config", PIVOT_SET, "--plus-config",
                                         "{tmp}/o.xml", "-o", "{tmp}/p.json"],
         setup=lambda t: (t / "o.xml").mkdir(), mention=["o.xml", "folder"]),
    Case("register-output-is-folder", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET, "--detect-landmarks",
                                       "-o", "{tmp}/r.json"], setup=lambda t: (t / "r.json").mkdir(),
         mention=["r.json", "folder"]),
    Case("register-plus-config-under-a-file", ["register-phantom", LANDMARKS, "--config", LANDMARK_SET,
                                               "--detect-landmarks", "--plus-config", "{tmp}/afile/o.xml",
                                               "-o", "{tmp}/r.json"], setup=_write("afile", "x"), mention=["afile"]),
    Case("register-output-overwrites-config", ["register-phantom", LANDMARKS, "--config", "{tmp}/set.xml",
                                               "--detect-landmarks", "-o", "{tmp}/set.xml"],
         setup=_write("set.xml", "<PlusConfiguration/>"), mention=["set.xml", "overwrite"]),
    Case("segment-output-is-folder", ["segment", VLCUS, "--config", VLCUS_SET, "-o", "{tmp}/s.json"],
         setup=lambda t: (t / "s.json").mkdir(), mention=["s.json", "folder"]),
    Case("segment-output-under-a-file", ["segment", VLCUS, "--config", VLCUS_SET, "-o", "{tmp}/afile/s.json"],
         setup=_write("afile", "x"), mention=["afile"]),
    Case("apply-lag-output-wrong-extension", ["apply-lag", TRACKER, "--lag", "0.1", "-o", "{tmp}/o.json"],
         mention=["o.json", "format"]),
    Case("apply-lag-output-is-folder", ["apply-lag", TRACKER, "--lag", "0.1", "-o", "{tmp}/o.igs.mha"],
         setup=lambda t: (t / "o.igs.mha").mkdir(), mention=["o.igs.mha", "folder"]),
    # calibrate's new option
    Case("calibrate-time-offset-contradiction", ["calibrate", CAL, "--phantom", CAL_SET, "--time-offset-s", "0.1",
                                                 "--no-time-offset", "-o", "{tmp}/c.json"],
         mention=["--time-offset-s", "--no-time-offset"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
