"""CLI: ``freehand3d stream`` (live OpenIGTLink input) and ``freehand3d replay`` (PLUS-style server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _host_port(value: str) -> tuple[str, int]:
    from freehand3d.errors import ConfigError

    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("expected HOST:PORT", value)
    return host, int(port)


def register(app: typer.Typer) -> None:
    @app.command()
    def stream(
        host: str = typer.Option("127.0.0.1", help="OpenIGTLink server (PlusServer, Slicer)."),
        port: int = typer.Option(18944, help="Server port (PlusServer default 18944)."),
        image_device: Optional[str] = typer.Option(None, help="IMAGE device name (default: the first one seen)."),
        reference: str = typer.Option("Reference", help="Frame the poses and the volume are in."),
        calibration: Optional[Path] = typer.Option(None, help="result.json with image_to_probe, to compose ImageToReference."),
        record: Optional[Path] = typer.Option(None, help="Record to a PLUS sequence file (.igs.mha/.igs.nrrd)."),
        reconstruct: Optional[Path] = typer.Option(None, help="Live-compound into this volume (.nrrd/.mha)."),
        spacing: float = typer.Option(0.5, help="Voxel size (mm) of the live volume."),
        method: str = typer.Option("nearest", help="nearest|linear"),
        compounding: str = typer.Option("latest", help="latest|max|mean"),
        snapshot_every: Optional[float] = typer.Option(None, help="Write the volume every S seconds."),
        send_volume: Optional[str] = typer.Option(None, help="HOST:PORT to send the volume to as an IMAGE."),
        duration: Optional[float] = typer.Option(None, help="Stop after S seconds."),
        frames: Optional[int] = typer.Option(None, help="Stop after N frames."),
        connect_timeout: float = typer.Option(10.0, help="Seconds to keep trying to (re)connect."),
    ) -> None:
        """Receive frames and poses over OpenIGTLink, losslessly; record and/or compound them live."""
        import json

        from rich.console import Console
        from rich.live import Live

        from freehand3d.errors import ConfigError, InputError
        from freehand3d.stream.igtl import IGTLSource
        from freehand3d.stream.live import run_live

        image_to_probe = None
        if calibration is not None:
            try:
                image_to_probe = json.loads(calibration.read_text())["image_to_probe"]
            except (OSError, ValueError, KeyError) as exc:
                raise InputError(f"cannot read image_to_probe ({exc.__class__.__name__}: {exc})", calibration) from None
        if record is None and reconstruct is None and frames is None and duration is None:
            raise ConfigError("nothing to do: give --record and/or --reconstruct, or --frames/--duration to just count")
        send_to = _host_port(send_volume) if send_volume else None
        source = IGTLSource(host, port, image_device=image_device, reference=reference,
                            image_to_probe=image_to_probe, connect_timeout=connect_timeout)
        console = Console(stderr=True)

        def status(res, src) -> str:
            s = src.stats
            fps = res.frames / max(1e-9, __import__("time").perf_counter() - started[0])
            return (f"frames {s.frames}  fps {fps:5.1f}  transforms {s.transforms}  missed {s.missed}  "
                    f"malformed {s.malformed}  reconnects {s.reconnects}")

        import time

        started = [time.perf_counter()]
        with Live("connecting...", console=console, refresh_per_second=4, transient=False) as live:
            def on_frame(res, src):
                if res.frames % 10 == 1:
                    live.update(status(res, src))

            result = run_live(source, record=record, reconstruct=reconstruct, spacing=spacing, method=method,
                              compounding=compounding, snapshot_every=snapshot_every, send_volume_to=send_to,
                              duration=duration, max_frames=frames, on_frame=on_frame)
            live.update(status(result, source))
        s = result.stats
        typer.echo(
            f"received {result.frames} frames in {result.seconds:.1f} s ({result.fps:.1f} fps); "
            f"missed {s['missed']}, malformed {s['malformed']}, reconnects {s['reconnects']}"
        )
        if result.recording:
            typer.echo(f"recording: {result.recording}")
        if result.volume:
            typer.echo(f"volume: {result.volume} (median latency {result.latency_ms(50):.1f} ms)")

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
    ) -> None:
        """Serve a recording over OpenIGTLink in PlusServer's conventions."""
        from freehand3d.io import read_sweep
        from freehand3d.stream.igtl import ReplayServer

        sweep = read_sweep(sequence)
        server = ReplayServer(sweep, port=port, fps=fps, image_device=image_device, embed=embed,
                              timestamps=timestamps, start_frame=start_frame, loop=loop)
        typer.echo(f"serving {len(sweep)} frames of {sequence} on 127.0.0.1:{server.port}", err=True)
        try:
            for _ in range(clients):
                sent = server.serve_once(accept_timeout=3600)
                typer.echo(f"sent {sent} frames", err=True)
        finally:
            server.close()
