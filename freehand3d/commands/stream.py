"""CLI: ``freehand3d stream`` (live OpenIGTLink input), ``freehand3d replay`` (PLUS-style server) and
``freehand3d recover`` (finish a recording that was interrupted)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_SEQUENCE_SUFFIXES = (".mha", ".mhd", ".nrrd")
_VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")


def _host_port(value: str) -> tuple[str, int]:
    from freehand3d.errors import ConfigError

    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError("expected HOST:PORT with a port in 1..65535", value)
    return host, int(port)


def _check_port(port: int, option: str = "--port") -> None:
    from freehand3d.errors import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"{option} must be in 1..65535, got {port}")


def _check_positive(value, option: str, allow_zero: bool = False) -> None:
    from freehand3d.errors import ConfigError

    if value is None:
        return
    if value != value or (value < 0 if allow_zero else value <= 0):
        raise ConfigError(f"{option} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_choice(value: str, option: str, choices: tuple[str, ...]) -> None:
    from freehand3d.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


def register(app: typer.Typer) -> None:
    @app.command()
    def stream(
        host: str = typer.Option("127.0.0.1", help="OpenIGTLink server (PlusServer, Slicer)."),
        port: int = typer.Option(18944, help="Server port (PlusServer default 18944)."),
        image_device: Optional[str] = typer.Option(None, help="IMAGE device name (default: the first one seen)."),
        reference: str = typer.Option("Reference", help="Frame the poses and the volume are in."),
        calibration: Optional[Path] = typer.Option(None, help="result.json with image_to_probe, to compose ImageToReference."),
        record: Optional[Path] = typer.Option(None, help="Record to a PLUS sequence file (.igs.mha/.mhd/.igs.nrrd), written through to disk as frames arrive."),
        reconstruct: Optional[Path] = typer.Option(None, help="Live-compound into this volume (.nrrd/.mha)."),
        spacing: float = typer.Option(0.5, help="Voxel size (mm) of the live volume."),
        method: str = typer.Option("nearest", help="nearest|linear"),
        compounding: str = typer.Option("latest", help="latest|max|mean"),
        snapshot_every: Optional[float] = typer.Option(None, help="Write the volume every S seconds."),
        send_volume: Optional[str] = typer.Option(None, help="HOST:PORT to send the volume to as an IMAGE."),
        duration: Optional[float] = typer.Option(None, help="Stop after S seconds of wall-clock time (frames or not)."),
        frames: Optional[int] = typer.Option(None, help="Stop after N frames."),
        connect_timeout: float = typer.Option(10.0, help="Seconds to keep trying to (re)connect."),
        image_timeout: float = typer.Option(10.0, help="Give up when no IMAGE arrives this many seconds after connecting."),
        stall_timeout: float = typer.Option(5.0, help="Drop a connection whose message stops arriving for this many seconds."),
        request: str = typer.Option("auto", help="auto|get|stt|none: ask on-request servers for images (STT_IMAGE/GET_IMAGE)."),
        live_queue: int = typer.Option(32, help="Frames queued for the live volume before the oldest is dropped (32: the backlog of the first 20 frames inserted at once when the grid is set up, ~0.5 s at 60 fps)."),
        live_policy: str = typer.Option("drop-oldest", help="drop-oldest|block: what a full live-volume queue does (block slows the sender)."),
        reconnect: bool = typer.Option(True, help="Reconnect when the server goes away."),
        max_message_mb: float = typer.Option(256.0, help="A message declaring a larger body is treated as garbage (MB)."),
        track: Optional[Path] = typer.Option(None, help="DualTrack checkpoint: track the frames sensorlessly as they arrive (live)."),
        track_output: Optional[Path] = typer.Option(None, help="With --track: write the final (N, 4, 4) ImageToReference poses (.npy)."),
        track_emitted: Optional[Path] = typer.Option(None, help="With --track: write the (N, 4, 4) poses emitted as the frames arrived (.npy)."),
    ) -> None:
        """Receive frames and poses over OpenIGTLink, losslessly; record and/or compound them live.

        The recording is written through to disk as frames arrive (REC.pixels + REC.journal beside
        REC); SIGTERM, SIGHUP and Ctrl-C finish it cleanly; after a crash `freehand3d recover REC`
        makes it readable.
        """
        import json
        import sys
        import time

        from freehand3d.errors import ConfigError, InputError, StreamError
        from freehand3d.stream.igtl import IGTLSource
        from freehand3d.stream.live import run_live
        from freehand3d.stream.recorder import unfinished_recording

        _check_port(port)
        _check_positive(spacing, "--spacing")
        _check_positive(duration, "--duration")
        _check_positive(snapshot_every, "--snapshot-every")
        _check_positive(connect_timeout, "--connect-timeout")
        _check_positive(image_timeout, "--image-timeout")
        _check_positive(stall_timeout, "--stall-timeout")
        _check_positive(live_queue, "--live-queue")
        _check_positive(max_message_mb, "--max-message-mb")
        _check_choice(method, "--method", ("nearest", "linear"))
        _check_choice(compounding, "--compounding", ("latest", "max", "mean"))
        _check_choice(request, "--request", ("auto", "get", "stt", "none"))
        _check_choice(live_policy, "--live-policy", ("drop-oldest", "block"))
        if frames is not None and frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {frames}")
        if record is not None:
            if record.is_dir():
                raise ConfigError("--record is a folder; give a file name", record)
            if not record.name.lower().endswith(_SEQUENCE_SUFFIXES):
                raise ConfigError("--record must be a PLUS sequence file (.igs.mha, .mhd or .igs.nrrd)", record)
            if unfinished_recording(record):
                raise InputError(f"an unfinished recording is in the way: run `freehand3d recover {record}` first "
                                 "(or remove its .pixels/.journal files)", record)
        if reconstruct is not None:
            if reconstruct.is_dir():
                raise ConfigError("--reconstruct is a folder; give a file name", reconstruct)
            if not reconstruct.name.lower().endswith(_VOLUME_SUFFIXES):
                raise ConfigError("--reconstruct must be a volume file (.nrrd, .mha, .mhd, .nii, .nii.gz)", reconstruct)
        if record is not None and reconstruct is not None and record.resolve() == reconstruct.resolve():
            raise ConfigError("--record and --reconstruct name the same file", record)
        for out in (record, reconstruct):
            if out is not None and out.parent.exists() and not out.parent.is_dir():
                raise ConfigError("the output's folder is a file", out)
        image_to_probe = None
        if calibration is not None:
            try:
                image_to_probe = json.loads(calibration.read_text())["image_to_probe"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InputError(f"cannot read image_to_probe ({exc.__class__.__name__}: {exc})", calibration) from None
        tracking = None
        if track is None and (track_output is not None or track_emitted is not None):
            raise ConfigError("--track-output and --track-emitted need --track CKPT")
        if track is not None:  # loads the model and measures its kernels before connecting
            from freehand3d.tracking.live import StreamTracking

            tracking = StreamTracking(track, track_output, emitted_output=track_emitted)
        if record is None and reconstruct is None and tracking is None and frames is None and duration is None:
            raise ConfigError("nothing to do: give --record and/or --reconstruct, or --frames/--duration to just count")
        send_to = _host_port(send_volume) if send_volume else None
        source = IGTLSource(host, port, image_device=image_device, reference=reference,
                            image_to_probe=image_to_probe, connect_timeout=connect_timeout,
                            image_timeout=image_timeout, stall_timeout=stall_timeout, request=request,
                            reconnect=reconnect, duration=duration,
                            max_message_bytes=int(max_message_mb * 2**20))
        # a status line only on a terminal, redrawn at most twice a second from the consuming thread
        # (rich's Live refresh thread competed with the receiver for the GIL: 88 vs 12 ms median
        # latency at 120 fps)
        tty = sys.stderr.isatty()
        last_update = [0.0]

        def status(res, src) -> str:
            s = src.stats
            return (f"frames {s.frames}  fps {res.fps:5.1f}  transforms {s.transforms}  missed {s.missed}  "
                    f"malformed {s.malformed}  reconnects {s.reconnects}")

        def on_frame(res, src):
            now = time.monotonic()
            if tty and now - last_update[0] > 0.5:
                last_update[0] = now
                sys.stderr.write("\r" + status(res, src) + "\033[K")
                sys.stderr.flush()

        try:
            result = run_live(source, record=record, reconstruct=reconstruct, spacing=spacing, method=method,
                              compounding=compounding, snapshot_every=snapshot_every, send_volume_to=send_to,
                              max_frames=frames, on_frame=on_frame, volume_queue=live_queue,
                              volume_policy=live_policy, consumers=[tracking.stage] if tracking else None)
        finally:
            if tty and last_update[0]:
                sys.stderr.write("\r\033[K")
                sys.stderr.flush()
        s = result.stats
        if result.frames == 0:
            raise StreamError(f"no IMAGE received in {result.seconds:.1f} s (stopped by "
                              f"{result.stopped_by or 'end of stream'}); received: {source.stats.seen()}",
                              f"{host}:{port}")
        typer.echo(
            f"received {result.frames} frames in {result.seconds:.1f} s ({result.fps:.1f} fps); "
            f"missed {s['missed']}, malformed {s['malformed']}, reconnects {s['reconnects']}"
            + (f", stalled {s['stalled']}" if s["stalled"] else "")
            + (f", {s['zero_timestamps']} frames without a timestamp stamped on receipt" if s["zero_timestamps"] else "")
        )
        if len(result.receive_latencies):
            typer.echo(f"latency to the consumers (send time -> recorded when the sender stamps with the wall clock, "
                       f"else receipt -> recorded): p50 {result.receive_latency_ms(50):.1f} ms, "
                       f"p95 {result.receive_latency_ms(95):.1f} ms")
        for st in result.stages:
            typer.echo(f"  {st['name']}: {st['processed']} frames, dropped {st['dropped']} (queue full) "
                       f"+ {st['dropped_at_exit']} (at exit) [{st['policy']}]")
        if result.stopped_by:
            typer.echo(f"stopped by {result.stopped_by}")
        if result.recording:
            typer.echo(f"recording: {result.recording} ({result.recorded} frames)")
        if result.volume:
            typer.echo(f"volume: {result.volume} (latency p50 {result.latency_ms(50):.1f} ms, "
                       f"p95 {result.latency_ms(95):.1f} ms)")
        if tracking is not None:
            typer.echo(tracking.summary())

    @app.command()
    def recover(
        recording: Path = typer.Argument(..., help="The recording that was interrupted (REC, REC.pixels or REC.journal)."),
    ) -> None:
        """Finish a recording whose `stream` was killed: write REC from REC.pixels + REC.journal."""
        from freehand3d.stream.recorder import recover_recording

        out = recover_recording(recording)
        from freehand3d.io.plus_sequence import read_plus_header

        header = read_plus_header(out)
        dims = (header.get("DimSize") or header.get("sizes") or "").split()
        typer.echo(f"recovered {dims[2] if len(dims) > 2 else 1} frames into {out}")

    @app.command()
    def replay(
        sequence: Path = typer.Argument(..., help="PLUS sequence file to play."),
        port: int = typer.Option(18944, help="Port to listen on (127.0.0.1)."),
        fps: float = typer.Option(30.0, help="Frames per second (0: as fast as possible)."),
        image_device: str = typer.Option("Image", help="IMAGE device name."),
        embed: Optional[str] = typer.Option(None, help="Embed ImageTo<FRAME> in the IMAGE (sent as <Image>_<FRAME>), like PLUS's EmbeddedTransformToFrame."),
        timestamps: str = typer.Option("original", help="original|now"),
        loop: bool = typer.Option(False, help="Repeat the recording until interrupted."),
        start_frame: int = typer.Option(0, help="First frame to send."),
        clients: int = typer.Option(1, help="Serve this many client connections, one after another."),
        accept_timeout: float = typer.Option(3600.0, help="Seconds to wait for a client."),
        header_version: int = typer.Option(2, help="OpenIGTLink header version: 2 (metadata: TransformStatus, FrameNumber, frame fields) or 1."),
        on_request: bool = typer.Option(False, help="Send nothing until the client asks (STT_IMAGE starts the stream, GET_IMAGE gets one frame)."),
    ) -> None:
        """Serve a recording over OpenIGTLink in PlusServer's conventions."""
        from freehand3d.errors import ConfigError, InputError
        from freehand3d.io import read_sweep
        from freehand3d.stream.igtl import ReplayServer

        if port != 0:  # 0: any free port (printed)
            _check_port(port)
        _check_positive(fps, "--fps", allow_zero=True)
        _check_positive(accept_timeout, "--accept-timeout")
        _check_choice(timestamps, "--timestamps", ("original", "now"))
        if clients < 1:
            raise ConfigError(f"--clients must be >= 1, got {clients}")
        if header_version not in (1, 2):
            raise ConfigError(f"--header-version must be 1 or 2, got {header_version}")
        sweep = read_sweep(sequence)
        if not 0 <= start_frame < len(sweep):
            raise ConfigError(f"--start-frame must be in 0..{len(sweep) - 1}, got {start_frame}")
        if embed is not None:
            try:
                _, ok = sweep.transform(f"ImageTo{embed}")
            except (InputError, KeyError) as exc:
                raise ConfigError(f"--embed {embed}: {getattr(exc, 'problem', exc)}", sequence) from None
            if not ok.any():
                raise ConfigError(f"--embed {embed}: the recording cannot give ImageTo{embed} for any frame", sequence)
        server = ReplayServer(sweep, port=port, fps=fps, image_device=image_device, embed=embed,
                              timestamps=timestamps, start_frame=start_frame, loop=loop,
                              header_version=header_version, on_request=on_request)
        typer.echo(f"serving {len(sweep)} frames of {sequence} on 127.0.0.1:{server.port}", err=True)
        try:
            for i in range(clients):
                sent = server.serve_once(accept_timeout=accept_timeout, last=i == clients - 1)
                typer.echo(f"sent {sent} frames", err=True)
        finally:
            server.close()
