"""Receive frames and poses from a PlusServer (or 3D Slicer) over OpenIGTLink, record them and
reconstruct a volume live.

Shows: a lossless OpenIGTLink client (every IMAGE with the TRANSFORMs of its time, counts of missed
and malformed messages), recording to a PLUS sequence file and live compounding into a volume.

    # a running PlusServer on its default port (poses: ImageToReference, or ProbeToTracker +
    # ReferenceToTracker with --calibration result.json from the calibration example)
    python examples/stream_from_plusserver.py --host 127.0.0.1 --port 18944 --frames 300 --out out/stream
    # standalone: serve the bundled spine sweep with freehand3d's PLUS-style replay server on loopback
    python examples/stream_from_plusserver.py --self-test --out out/stream
    python examples/stream_from_plusserver.py --self-test --fast --out out/stream   # as fast as possible

The same from the command line:
    freehand3d replay SpinePhantomFreehand.igs.mha --port 18944 &
    freehand3d stream --port 18944 --record rec.igs.mha --reconstruct live.nrrd --frames 21
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"
SPINE = DATA / "SpinePhantomFreehand.igs.mha"
SPINE_CONFIG = DATA / "PlusDeviceSet_VolumeReconstructionOnly_SonixRP_TRUS_D70mm_NN_LATE.xml"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="OpenIGTLink server.")
    parser.add_argument("--port", type=int, default=18944, help="Server port (PlusServer's default 18944).")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="result.json with image_to_probe, when the server sends only tracker transforms.")
    parser.add_argument("--frames", type=int, default=None, help="Stop after this many frames.")
    parser.add_argument("--duration", type=float, default=None, help="Stop after this many seconds.")
    parser.add_argument("--spacing", type=float, default=0.5, help="Voxel size of the live volume (mm).")
    parser.add_argument("--self-test", action="store_true",
                        help="Serve the bundled spine sweep on loopback (freehand3d's replay server) and connect to it.")
    parser.add_argument("--fps", type=float, default=30.0, help="Replay rate of --self-test.")
    parser.add_argument("--out", type=Path, required=True, help="Output folder.")
    parser.add_argument("--fast", action="store_true", help="With --self-test: replay as fast as possible, 1 mm voxels.")
    args = parser.parse_args(argv)

    import numpy as np

    from freehand3d._atomic import write_text_atomic
    from freehand3d.stream.igtl import IGTLSource, ReplayServer
    from freehand3d.stream.live import run_live
    import freehand3d.compound.volume  # noqa: F401  (imported now, not while the first frames wait)

    image_to_probe = None
    if args.calibration is not None:
        image_to_probe = np.asarray(json.loads(args.calibration.read_text())["image_to_probe"], float)
    server = None
    host, port = args.host, args.port
    if args.self_test:
        from freehand3d.io import read_sweep
        from freehand3d.io.plus_config import read_device_set

        sweep = read_sweep(SPINE)
        # the recording has no calibration; the device set that came with it has ImageToProbe
        sweep.image_to_probe = read_device_set(SPINE_CONFIG).coordinate_definitions["ImageToProbe"].matrix
        # like PlusServer with EmbeddedTransformToFrame="Reference": IMAGE "Image_Reference" carries the pose
        server = ReplayServer(sweep, port=0, fps=0.0 if args.fast else args.fps,
                              embed="Reference").start(accept_timeout=300)  # kernels load before connecting
        host, port = "127.0.0.1", server.port
        print(f"replaying {len(sweep)} frames of {SPINE.name} on {host}:{port}")
        if args.frames is None:
            args.frames = len(sweep)
    args.out.mkdir(parents=True, exist_ok=True)
    source = IGTLSource(host, port, image_to_probe=image_to_probe, reconnect=not args.self_test, connect_timeout=10.0)
    try:
        result = run_live(source, record=args.out / "recording.igs.mha", reconstruct=args.out / "live.nrrd",
                          spacing=1.0 if args.fast else args.spacing, duration=args.duration, max_frames=args.frames,
                          # the self-test wants every frame in the volume: wait for it instead of dropping the
                          # oldest queued frame as a live view does
                          volume_policy="block" if args.self_test else "drop-oldest")
    finally:
        source.close()
        if server is not None:
            server.close()
    summary = {
        "frames": result.frames,
        "inserted": result.inserted,
        "seconds": result.seconds,
        "fps": result.fps,
        "median_latency_ms": result.latency_ms(50),
        **{k: v for k, v in result.stats.items() if isinstance(v, (int, float))},
        "recording": result.recording,
        "volume": result.volume,
    }
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    print(f"received {result.frames} frames ({result.fps:.1f} fps), inserted {result.inserted}; "
          f"missed {result.stats.get('missed')}, malformed {result.stats.get('malformed')}; "
          f"recording {result.recording}, volume {result.volume}")
    return summary


if __name__ == "__main__":
    main()
