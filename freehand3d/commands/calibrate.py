"""CLI of the calibration chain: ``calibrate`` (N-wire probe calibration), ``temporal-calibrate``
(tracker lag), ``pivot-calibrate`` (stylus tip), ``register-phantom`` (PhantomToReference) and
``segment`` (N-wire points per frame)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def _echo_warnings(caught) -> None:
    for w in caught:
        typer.echo(f"freehand3d: warning: {w.message}", err=True)


def _check_outputs(files=(), folders=(), inputs=()) -> None:
    """Before any work: every output file can be written (not a folder, no file in the way of its
    folder, the folder writable), every output folder can be made, and no output overwrites an input.
    ``files``/``folders``: (path or None, what it is) pairs."""
    from freehand3d._atomic import check_output_dir, check_output_path
    from freehand3d.errors import ConfigError

    ins = {Path(p).resolve() for p in inputs if p is not None and Path(p).exists()}
    for path, what in files:
        if path is None:
            continue
        check_output_path(path, what)
        if Path(path).resolve() in ins:
            raise ConfigError(f"the {what} would overwrite an input file; give another name", path)
    for path, what in folders:
        if path is not None:
            check_output_dir(path, what)


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_command(
        calibration: Path = typer.Argument(..., help="Tracked N-wire recording (.igs.mha, .seq.nrrd, ...)."),
        phantom: str = typer.Option(..., "--phantom", "-p",
                                    help="Phantom: shipped name (fcal-1.2), phantom YAML or PLUS device-set XML."),
        output: Path = typer.Option(..., "--output", "-o", help="Result JSON to write."),
        validation: Optional[Path] = typer.Option(None, "--validation", help="Independent validation recording."),
        solver: str = typer.Option("ransac-lm", "--solver", help="ransac-lm, plus (PLUS LSQR) or lm (plain LM)."),
        config: Optional[Path] = typer.Option(None, "--config",
                                              help="PLUS device set: segmentation settings and PhantomToReference."),
        plus_config: Optional[Path] = typer.Option(None, "--plus-config",
                                                   help="Write a copy of the device set with the new ImageToProbe."),
        tfm: Optional[Path] = typer.Option(None, "--tfm", help="Write ImageToProbe as an ITK .tfm file."),
        overlay: Optional[Path] = typer.Option(None, "--overlay", help="Folder for PNG overlays of the detections."),
        detection: str = typer.Option("hessian", "--detection", help="hessian (top-hat + Hessian) or plus."),
        seed: int = typer.Option(0, "--seed", help="RANSAC seed."),
        registration_prior_deg: float = typer.Option(
            1.0, "--registration-prior-deg", min=0.0,
            help="Std dev (degrees) of the phantom registration, refined jointly (ransac-lm, lm)."),
        registration_prior_mm: float = typer.Option(
            1.0, "--registration-prior-mm", min=0.0,
            help="Std dev (mm) of the phantom registration, refined jointly (ransac-lm, lm)."),
        fixed_registration: bool = typer.Option(
            False, "--fixed-registration", help="Take the phantom registration as exact (no refinement)."),
        time_offset: bool = typer.Option(
            True, "--time-offset/--no-time-offset",
            help="Estimate a constant tracker-to-image time offset on the calibration frames (ransac-lm, lm)."),
        time_offset_s: Optional[float] = typer.Option(
            None, "--time-offset-s",
            help="Use this tracker lag (s, temporal-calibrate's tracker_lag_s) instead of estimating one."),
        to_uint8: str = typer.Option(
            "dtype", "--to-uint8",
            help="How non-8-bit frames become 8-bit grey for detection: dtype (full type range), window "
                 "(--window LOW,HIGH) or minmax (whole recording). One map for all frames; uint8 is used as is."),
        window: Optional[str] = typer.Option(None, "--window", help="LOW,HIGH grey window for --to-uint8 window."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    ) -> None:
        """Calibrate a tracked probe (ImageToProbe) from an N-wire phantom recording."""
        from freehand3d.calibration.pipeline import calibrate_files
        from freehand3d.commands._progress import Phases
        from freehand3d.calibration.solve import RegistrationPrior
        from freehand3d.errors import ConfigError
        from freehand3d.sweep import checked_conversion

        method, win = checked_conversion(to_uint8, window)

        if fixed_registration:
            prior = None
        elif registration_prior_deg > 0 and registration_prior_mm > 0:
            prior = RegistrationPrior(registration_prior_deg, registration_prior_mm)
        else:
            raise ConfigError("--registration-prior-deg and --registration-prior-mm must be > 0 "
                              "(use --fixed-registration to keep the registration as given)")

        import warnings

        if time_offset_s is not None and not time_offset:
            raise ConfigError("--time-offset-s and --no-time-offset contradict each other: give one")
        # the outputs are checked before the recordings are read and calibrated (~26 s)
        if plus_config is not None and not any(
                c is not None and str(c).lower().endswith(".xml") for c in (phantom, config)):
            raise ConfigError("--plus-config needs a PLUS device set as --phantom or --config to copy", plus_config)
        if tfm is not None and not tfm.name.lower().endswith((".tfm", ".txt")):
            raise ConfigError("the ITK transform file needs a name ending in .tfm or .txt", tfm)
        _check_outputs(files=[(output, "result JSON"), (tfm, "transform file (--tfm)")],
                       folders=[(overlay, "overlay folder")],
                       inputs=[calibration, validation, config, Path(phantom)])
        _check_outputs(files=[(plus_config, "device set (--plus-config)")], inputs=[calibration, validation])
        with warnings.catch_warnings(record=True) as caught, Phases(quiet) as phases:
            warnings.simplefilter("always")

            def factory(total: int):
                phases.start("segmenting frames", total, then=f"calibrating ({solver})")
                return phases.advance

            result = calibrate_files(
                calibration, phantom, output, validation_path=validation, solver=solver, config=config,
                plus_config=plus_config, tfm=tfm, overlay=overlay, detection=detection, seed=seed,
                progress_factory=factory, registration_prior=prior, time_offset=time_offset,
                fixed_time_offset_s=time_offset_s,
                to_uint8=method, window=win,
            )
        _echo_warnings([w for w in caught if issubclass(w.category, UserWarning)])
        val = ("" if result.pre3d_validation_mean_mm is None else
               f", validation PRE3D {result.pre3d_validation_mean_mm:.3f} +- {result.pre3d_validation_std_mm:.3f} mm "
               f"({result.validation_frames_segmented}/{result.validation_frames_total} frames)")
        extra = "" if result.time_offset_s is None else f"; time offset {result.time_offset_s * 1e3:.0f} ms"
        if result.registration_change_deg is not None and result.registration_prior is not None:
            extra += (f"; phantom registration refined by {result.registration_change_deg:.2f} deg, "
                      f"{result.registration_change_mm:.2f} mm")
        typer.echo(
            f"segmented {result.frames_segmented}/{result.frames_total} frames, {result.inliers}/{result.observations} "
            f"inliers; calibration PRE3D {result.pre3d_calibration_mean_mm:.3f} +- "
            f"{result.pre3d_calibration_std_mm:.3f} mm{val}{extra}; {result.seconds:.2f} s -> {output}"
        )

    @app.command("temporal-calibrate")
    def temporal_calibrate_command(
        video: Path = typer.Argument(..., help="Video recording (water-tank bottom, or an N-wire recording with --phantom)."),
        output: Path = typer.Option(..., "--output", "-o", help="Result JSON to write (tracker_lag_s, tracker_lag_std_s, method)."),
        tracker: Optional[Path] = typer.Option(None, "--tracker",
                                               help="Tracker recording (tracker-only sequence); default: VIDEO's own poses."),
        config: Optional[Path] = typer.Option(None, "--config",
                                              help="PLUS device set: line-search rectangle, or N-wire segmentation and PhantomToReference."),
        phantom: Optional[str] = typer.Option(None, "--phantom", "-p",
                                              help="N-wire phantom (name, YAML or device set): estimate the lag from VIDEO alone."),
        clip: Optional[List[int]] = typer.Option(None, "--clip", help="Line-search rectangle X Y WIDTH HEIGHT (pixels); repeat 4 times."),
        max_lag: Optional[float] = typer.Option(None, "--max-lag", help="Search range in s (water tank 0.5, N-wire 1.0)."),
        polarity: str = typer.Option("best", "--polarity", help="best (better alignment) or plus (PLUS: smaller |lag|)."),
        blocks: int = typer.Option(5, "--blocks", min=0, help="Jackknife blocks for the uncertainty (0: none)."),
    ) -> None:
        """Tracker-to-video lag (PLUS's TrackerLagSec sign) from a water-tank or an N-wire recording."""
        import warnings

        from freehand3d.calibration.temporal import temporal_calibrate_files
        from freehand3d.errors import ConfigError

        if clip is not None and len(clip) not in (0, 4):
            raise ConfigError(f"--clip needs 4 numbers (X Y WIDTH HEIGHT), got {len(clip)}")
        _check_outputs(files=[(output, "result JSON")], inputs=[video, tracker, config])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = temporal_calibrate_files(
                video, output, tracker_path=tracker, config=config, phantom=phantom,
                clip=tuple(clip) if clip else None, max_lag_s=max_lag, polarity=polarity, n_blocks=blocks,
            )
        _echo_warnings(caught)
        std = "" if result.tracker_lag_std_s != result.tracker_lag_std_s else f" +- {result.tracker_lag_std_s * 1e3:.1f}"
        typer.echo(f"{result.method}: tracker lag {result.tracker_lag_s * 1e3:+.1f}{std} ms "
                   f"(video frames {result.video_frames_used}, tracker samples {result.tracker_frames_used}) -> {output}")

    @app.command("pivot-calibrate")
    def pivot_calibrate_command(
        stylus_seq: Path = typer.Argument(..., help="Tracker recording of the stylus pivoting about its tip."),
        output: Path = typer.Option(..., "--output", "-o", help="Result JSON (stylus_tip_to_stylus, pivot_rms_mm)."),
        stylus: str = typer.Option("StylusToReference", "--stylus",
                                   help="Stylus transform (StylusToReference from StylusToTracker + ReferenceToTracker)."),
        method: str = typer.Option("robust", "--method", help="robust (RANSAC + Huber) or plus (PLUS's 3-sigma LSQR)."),
        spin: Optional[Path] = typer.Option(None, "--spin", help="Recording of the stylus spun about its shaft (orients the tip frame)."),
        threshold: Optional[float] = typer.Option(None, "--threshold-mm", help="Inlier distance of the robust method (default: automatic)."),
        config: Optional[Path] = typer.Option(None, "--config", help="Device set to copy into --plus-config."),
        plus_config: Optional[Path] = typer.Option(None, "--plus-config", help="Write the device set with StylusTipToStylus."),
        seed: int = typer.Option(0, "--seed", help="RANSAC seed."),
    ) -> None:
        """Stylus pivot calibration: StylusTipToStylus and the pivot error."""
        from freehand3d.calibration.pivot import pivot_calibrate_files

        _check_outputs(files=[(output, "result JSON")], inputs=[stylus_seq, spin, config])
        _check_outputs(files=[(plus_config, "device set (--plus-config)")], inputs=[stylus_seq, spin])
        result = pivot_calibrate_files(stylus_seq, output, stylus=stylus, method=method, spin_path=spin,
                                       threshold_mm=threshold, config=config, plus_config=plus_config, seed=seed)
        tip = result.stylus_tip_to_stylus[:3, 3]
        if result.pivot_rms_mm > 2.0:
            typer.echo(f"freehand3d: warning: the tip moves by {result.pivot_rms_mm:.1f} mm RMS about the pivot: "
                       "was the tip held fixed in a divot while the stylus pivoted?", err=True)
        typer.echo(f"{method}: tip ({tip[0]:.2f}, {tip[1]:.2f}, {tip[2]:.2f}) mm, pivot RMS {result.pivot_rms_mm:.3f} mm "
                   f"(mean {result.pivot_mean_mm:.3f}), {int(result.inliers.sum())}/{len(result.inliers)} poses -> {output}")

    @app.command("register-phantom")
    def register_phantom_command(
        stylus_seq: Path = typer.Argument(..., help="Tracker recording of the stylus touching the phantom's landmarks."),
        config: Path = typer.Option(..., "--config", help="Device set with the phantom's <Landmarks> and StylusTipToStylus."),
        output: Path = typer.Option(..., "--output", "-o", help="Result JSON (phantom_to_reference, fre_mm)."),
        detect_landmarks: bool = typer.Option(False, "--detect-landmarks",
                                              help="Find the landmark touches automatically (PLUS's detection)."),
        landmark_frames: Optional[List[int]] = typer.Option(None, "--landmark-frame",
                                                            help="Frame index where the tip rests on each landmark, in order (repeat)."),
        stylus_calibration: Optional[Path] = typer.Option(None, "--stylus-calibration",
                                                          help="pivot-calibrate result JSON (instead of the device set's StylusTipToStylus)."),
        plus_config: Optional[Path] = typer.Option(None, "--plus-config",
                                                   help="Write the device set with PhantomToReference (what calibrate reads)."),
        estimate: str = typer.Option("plus", "--estimate", help="Landmark position: plus (PLUS's samples) or dwell (whole rest)."),
        detector: str = typer.Option("plus", "--detector",
                                     help="Landmark detection rules: plus (PLUS's current detector) or plus-2014 "
                                          "(the one that made PlusLibData's baseline; docs/calibration.md)."),
    ) -> None:
        """Phantom registration (PhantomToReference) from stylus-tip landmark points."""
        from freehand3d.calibration.landmarks import register_phantom_files
        from freehand3d.errors import ConfigError

        if estimate not in ("plus", "dwell"):
            raise ConfigError(f"--estimate must be plus or dwell, not {estimate!r}")
        if detector not in ("plus", "plus-2014"):
            raise ConfigError(f"--detector must be plus or plus-2014, not {detector!r}")
        if detect_landmarks and landmark_frames:
            raise ConfigError("--detect-landmarks and --landmark-frame contradict each other: give one")
        _check_outputs(files=[(output, "result JSON")], inputs=[stylus_seq, stylus_calibration, config])
        _check_outputs(files=[(plus_config, "device set (--plus-config)")], inputs=[stylus_seq, stylus_calibration])
        tip = None
        if stylus_calibration is not None:
            tip = _read_stylus_calibration(stylus_calibration)
        result = register_phantom_files(stylus_seq, config, output, detect=detect_landmarks or not landmark_frames,
                                        stylus_tip_to_stylus=tip, estimate=estimate, plus_config=plus_config,
                                        landmark_frames=list(landmark_frames) if landmark_frames else None,
                                        detector=detector)
        typer.echo(f"registered {len(result.per_landmark_mm)} landmarks, FRE {result.fre_mm:.3f} mm RMS "
                   f"(max {result.fre_max_mm:.3f}) -> {output}")


    _register_segment(app)


def _read_stylus_calibration(path: Path):
    import json

    import numpy as np

    from freehand3d.errors import InputError

    try:
        data = json.loads(Path(path).read_text())
        matrix = np.array(data["stylus_tip_to_stylus"], float)
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"is not a pivot-calibrate result (no 4x4 stylus_tip_to_stylus: {exc})", path) from None
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise InputError("stylus_tip_to_stylus is not a finite 4x4 matrix", path)
    return matrix


def _register_segment(app: typer.Typer) -> None:
    @app.command("apply-lag")
    def apply_lag_command(
        sweep_path: Path = typer.Argument(..., help="Tracked recording (.igs.mha, .seq.nrrd, ...)."),
        output: Path = typer.Option(..., "--output", "-o", help="Recording with the poses read at timestamp + lag."),
        lag: Optional[float] = typer.Option(None, "--lag", help="Tracker lag in s (PLUS's TrackerLagSec sign)."),
        lag_json: Optional[Path] = typer.Option(None, "--lag-json", help="temporal-calibrate result (tracker_lag_s)."),
    ) -> None:
        """Synchronise a recording's poses with its images using a measured tracker lag (for reconstruct)."""
        import json
        import math

        from freehand3d.calibration.temporal import apply_tracker_lag
        from freehand3d.errors import ConfigError, InputError
        from freehand3d.io import H5_SUFFIXES, SEQUENCE_SUFFIXES, read_sweep, write_sweep

        if not output.name.lower().endswith(SEQUENCE_SUFFIXES + H5_SUFFIXES):
            raise ConfigError("unknown recording format; use one of "
                              f"{', '.join(SEQUENCE_SUFFIXES + H5_SUFFIXES)}", output)
        _check_outputs(files=[(output, "output recording")])
        if (lag is None) == (lag_json is None):
            raise ConfigError("give the lag either as --lag S or as --lag-json lag.json (one of them)")
        if lag_json is not None:
            try:
                lag = float(json.loads(Path(lag_json).read_text())["tracker_lag_s"])
            except FileNotFoundError:
                raise InputError("file not found", lag_json) from None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InputError(f"is not a temporal-calibrate result (no tracker_lag_s: {exc})", lag_json) from None
        if not math.isfinite(lag) or abs(lag) > 10:
            raise ConfigError(f"--lag must be a finite number of seconds within +-10, got {lag!r}")
        if Path(output).resolve() == Path(sweep_path).resolve():
            raise ConfigError("--output would overwrite the input recording; give another file", output)
        sweep = read_sweep(sweep_path)
        shifted = apply_tracker_lag(sweep, lag)
        write_sweep(shifted, output)
        lost = {k: int(sweep.valid[k].sum() - shifted.valid[k].sum()) for k in sweep.transforms}
        typer.echo(f"poses read at timestamp {lag * 1e3:+.1f} ms; frames losing a pose at the ends: "
                   f"{', '.join(f'{k} {v}' for k, v in lost.items()) or 'none'} -> {output}")

    @app.command("segment")
    def segment_command(
        recording: Path = typer.Argument(..., help="N-wire recording (.igs.mha, .seq.nrrd, ...)."),
        config: Path = typer.Option(..., "--config", help="PLUS device set: phantom and <Segmentation> settings."),
        output: Path = typer.Option(..., "--output", "-o", help="JSON: per frame the labelled wire points or why it failed."),
        detection: str = typer.Option("plus", "--detection", help="plus (PLUS's segmentation) or hessian."),
        phantom: Optional[str] = typer.Option(None, "--phantom", "-p", help="Phantom instead of the device set's."),
        baseline: Optional[Path] = typer.Option(None, "--baseline",
                                                help="PLUS *_Segmentation_baseline.xml to compare with."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress display."),
    ) -> None:
        """Segment the N-wires of every frame (no calibration): points in PLUS order or the failure reason."""
        from freehand3d.calibration.segment import segment_files
        from freehand3d.commands._progress import Phases

        _check_outputs(files=[(output, "result JSON")], inputs=[recording, config, baseline])
        with Phases(quiet) as phases:
            def factory(total: int):
                phases.start("segmenting frames", total, then="writing" if baseline is None else "comparing, writing")
                return phases.advance

            run = segment_files(recording, config, output, phantom=phantom, detection=detection, baseline=baseline,
                                progress_factory=factory)
        line = f"segmented {run.segmented}/{len(run.frames)} frames ({detection})"
        cmp = run.details.get("baseline")
        if cmp:
            worst = cmp["max_point_distance_px"]
            line += (f"; PLUS baseline {cmp['baseline_frames_segmented']}/{len(run.frames)}, "
                     f"{cmp['frames_both']} in both, max point distance "
                     f"{'n/a' if worst is None else f'{worst:.3f}'} px, {cmp['frames_over_1px']} frames over 1 px")
        typer.echo(f"{line} -> {output}")
