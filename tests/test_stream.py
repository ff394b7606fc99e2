"""OpenIGTLink streaming: lossless reception, PLUS conventions, malformed input, reconnection."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

import numpy as np
import pytest

from freehand3d import geometry
from freehand3d.stream.igtl import IGTLSource, ReplayServer, image_message, transform_message
from freehand3d.sweep import Sweep


def _sweep(n=60, h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, h, w), dtype=np.uint8)
    params = np.c_[np.linspace(0, 30, n), rng.normal(0, 1, n), np.zeros(n), np.linspace(0, 20, n), np.zeros((n, 2))]
    probe_to_tracker = geometry.params_to_matrix(params, "xyz", degrees=True)
    reference_to_tracker = np.tile(geometry.translation([5.0, -3.0, 2.0]), (n, 1, 1))
    return Sweep(frames, timestamps=100.0 + np.arange(n) / 30.0,
                 transforms={"ProbeToTracker": probe_to_tracker, "ReferenceToTracker": reference_to_tracker})


IMAGE_TO_PROBE = np.array([[0.1, 0, 0, 3.0], [0, 0.1, 0, -2.0], [0, 0, 0.1, 0], [0, 0, 0, 1]])


def test_replay_is_received_losslessly_with_poses():
    sweep = _sweep()
    with ReplayServer(sweep, port=0, fps=0) as server:
        # accept_timeout: a hang guard, the client may first compile its CRC kernel (12 s on a
        # fresh clone at load average 9)
        server.start(accept_timeout=300)
        source = IGTLSource(port=server.port, reconnect=False, image_to_probe=IMAGE_TO_PROBE)
        items = list(source)
    assert len(items) == len(sweep)
    assert source.stats.malformed == 0 and source.stats.missed == 0
    for item, frame in zip(items, sweep.frames):
        assert np.array_equal(item.frame, frame)
    got_ts = np.array([it.timestamp for it in items])
    # measured max |diff| 1.1e-10 (rel 1.1e-12) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(got_ts, sweep.timestamps, atol=1e-6)
    # OpenIGTLink TRANSFORM bodies are float32: poses equal to float32 precision
    for name, mats in sweep.transforms.items():
        got = np.stack([it.transforms[name] for it in items])
        # measured max |diff| 9.4e-07 (rel 5.1e-08) (AMD EPYC); tolerance > 1000x that
        np.testing.assert_allclose(got, mats, atol=1e-4 * np.abs(mats).max())
    expected = geometry.image_to_reference(sweep.transforms["ProbeToTracker"],
                                           sweep.transforms["ReferenceToTracker"], IMAGE_TO_PROBE)
    # measured max |diff| 9.4e-07 (rel 1.4e-06) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(np.stack([it.pose for it in items]), expected, atol=1e-3)


def test_plus_embedded_image_to_reference():
    sweep = _sweep(n=10)
    sweep.image_to_probe = IMAGE_TO_PROBE
    with ReplayServer(sweep, port=0, fps=0, embed="Reference") as server:
        server.start(accept_timeout=300)  # a hang guard (see above)
        items = list(IGTLSource(port=server.port, reconnect=False))
    assert {it.device for it in items} == {"Image_Reference"}
    expected = sweep.transform("ImageToReference")[0]
    # measured max |diff| 1.9e-06 (rel 7.4e-07) (AMD EPYC); tolerance 528x that
    np.testing.assert_allclose(np.stack([it.pose for it in items]), expected, atol=1e-3)
    # the image-centre convention of the wire format is undone: pixel (0, 0) maps to the origin column
    # measured max |diff| 3.1e-07 (rel 1.5e-07) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(items[0].pose[:3, 3], expected[0, :3, 3], atol=1e-3)


def _serve_bytes(chunks, delay=0.0):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        for chunk in chunks:
            # send in small pieces so headers are split across TCP reads
            for i in range(0, len(chunk), 7):
                conn.sendall(chunk[i:i + 7])
            time.sleep(delay)
        conn.close()
        listener.close()

    threading.Thread(target=run, daemon=True).start()
    return listener.getsockname()[1]


def _with_body(packed: bytes, body: bytes, fix_crc: bool = True) -> bytes:
    from pyigtl.messages import CRC64

    header = bytearray(packed[:58])
    struct.pack_into("> Q", header, 42, len(body))
    struct.pack_into("> Q", header, 50, CRC64(body) if fix_crc else 12345)
    return bytes(header) + body


def test_malformed_messages_are_counted_and_skipped():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 32, 48), dtype=np.uint8)
    good = [image_message(f, "Image", 10.0 + i).pack() for i, f in enumerate(frames)]
    truncated = _with_body(good[1], good[1][58:-100])          # wrong body size for the image it declares
    bad_crc = _with_body(good[2], good[2][58:], fix_crc=False)  # body intact, CRC wrong
    garbage = rng.integers(0, 256, 1000, dtype=np.uint8).tobytes()
    port = _serve_bytes([good[0], truncated, garbage, bad_crc, good[3]])
    source = IGTLSource(port=port, reconnect=False)
    items = list(source)
    assert [it.timestamp for it in items] == [10.0, 13.0]
    assert np.array_equal(items[1].frame, frames[3])
    assert source.stats.malformed == 3  # truncated body, garbage run, bad CRC
    assert source.stats.crc_errors == 1
    assert source.stats.resync_bytes >= 1000


def test_transform_matched_by_interpolation():
    # transforms at t = 0 and 1, image at t = 0.5: the pose is interpolated, not the latest
    a = geometry.translation([0, 0, 0])
    b = geometry.params_to_matrix([10, 0, 0, 0, 0, 40], "xyz", degrees=True)
    chunks = [transform_message(a, "ImageToReference", 1000.0).pack(),
              transform_message(b, "ImageToReference", 1001.0).pack(),
              image_message(np.zeros((8, 8), np.uint8), "Image", 1000.5).pack()]
    port = _serve_bytes([b"".join(chunks)])
    items = list(IGTLSource(port=port, reconnect=False))
    expected = geometry.params_to_matrix([5, 0, 0, 0, 0, 20], "xyz", degrees=True)
    # measured max |diff| 1.3e-08 (rel 3.8e-08) (AMD EPYC); tolerance 775x that
    np.testing.assert_allclose(items[0].pose, expected, atol=1e-5)


def test_server_restart_is_survived_and_gap_reported_as_missed():
    sweep = _sweep(n=120)
    first = ReplayServer(sweep, port=0, fps=200, n_frames=50)
    port = first.port
    first.start(accept_timeout=300)  # a hang guard: the client first loads its CRC kernel
    source = IGTLSource(port=port, reconnect=True, connect_timeout=10.0)
    received = []

    def consume():
        for item in source:
            received.append(item)
            if len(received) >= 90:
                break

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    first.wait(60)  # a hang guard: the client first loads its CRC kernel (seconds under load)
    first.close()  # the server goes away after frame 49
    time.sleep(0.5)
    second = ReplayServer(sweep, port=port, fps=100, start_frame=80, n_frames=40, loop=True)
    second.start()
    consumer.join(20)
    source.close()
    second.close()
    assert len(received) == 90
    assert source.stats.reconnects == 1
    assert source.stats.missed == 30  # frames 50..79 were never sent to this client
    assert np.array_equal(received[50].frame, sweep.frames[80])


def test_connect_failure_is_a_stream_error():
    from freehand3d.errors import StreamError

    with socket.socket() as held:  # bound, never listening: refused, and never a client's own port
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(StreamError, match="cannot connect"):
            list(IGTLSource(port=port, reconnect=False, connect_timeout=0.3))


DATA = __import__("pathlib").Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "plus"


def test_fcal_recording_replayed_at_60fps_is_recorded_losslessly(tmp_path):
    """Acceptance: the 820x616 fCal recording at 60 fps into `freehand3d stream --record`."""
    from typer.testing import CliRunner

    from freehand3d.cli import app
    from freehand3d.io import read_sweep

    source = read_sweep(DATA / "fCal_Test_Calibration_3NWires.igs.mha")
    server = ReplayServer(source, port=0, fps=60).start(accept_timeout=300)  # a hang guard (CLI start-up)
    out = tmp_path / "rec.igs.mha"
    result = CliRunner().invoke(app, ["stream", "--port", str(server.port), "--record", str(out),
                                      "--connect-timeout", "3", "--frames", "188"])
    server.close()
    assert result.exit_code == 0, result.output
    assert "received 188 frames" in result.output and "missed 0, malformed 0" in result.output
    rec = read_sweep(out)
    assert np.array_equal(rec.frames, source.frames)
    # measured max |diff| 1.2e-10 (rel 2.7e-13) (AMD EPYC); tolerance > 1000x that
    np.testing.assert_allclose(rec.timestamps, source.timestamps, atol=1e-6)
    for name, mats in source.transforms.items():
        assert np.array_equal(rec.valid[name], source.valid[name])
        # OpenIGTLink TRANSFORM carries float32
        # measured max |diff| 1.5e-05 (rel 5.8e-08) (AMD EPYC); tolerance 23.9x that
        np.testing.assert_allclose(rec.transforms[name], mats, atol=1e-4, rtol=1e-6)


def test_live_compounding_matches_batch_reconstruction(tmp_path):
    """Frames compounded live into a given grid equal the batch Reconstructor on the same frames."""
    from freehand3d.compound import OutputGrid, Reconstructor
    from freehand3d.io.volumes import read_volume
    from freehand3d.stream.live import run_live
    import SimpleITK as sitk

    sweep = _sweep(n=30)
    sweep.image_to_probe = IMAGE_TO_PROBE
    grid = OutputGrid((-10.0, -20.0, -10.0), (1.0, 1.0, 1.0), (70, 40, 40))
    with ReplayServer(sweep, port=0, fps=0, embed="Reference") as server:
        server.start(accept_timeout=300)  # the compounding kernels load before connecting
        out = tmp_path / "live.nrrd"
        result = run_live(IGTLSource(port=server.port, reconnect=False), reconstruct=out, grid=grid,
                          record=tmp_path / "rec.igs.mha", volume_policy="block",
                          drain_timeout=300)  # a hang guard: every frame queued at the end is inserted
    assert result.frames == result.inserted == 30
    live = sitk.GetArrayFromImage(read_volume(out))
    batch = Reconstructor(grid, method="nearest", compounding="latest")
    # poses travel as float32 in the IMAGE matrix: use the received ones for the comparison
    from freehand3d.io import read_sweep

    rec = read_sweep(tmp_path / "rec.igs.mha")
    batch.add_frames(rec.frames, rec.transforms["ImageToReference"])
    assert live.any()
    assert np.array_equal(live, batch.volume_array())


def test_receives_from_pyigtls_own_server():
    """Interoperability with an independent implementation: pyigtl's OpenIGTLinkServer."""
    import pyigtl

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = pyigtl.OpenIGTLinkServer(port=port, local_server=True)
    try:
        source = IGTLSource(port=port, reconnect=False, image_device="Image_Reference", connect_timeout=5)
        rng = np.random.default_rng(3)
        frames = rng.integers(0, 256, (20, 60, 80), dtype=np.uint8)
        poses = [geometry.params_to_matrix([i, 0, 0, 0, 0, i], "xyz", degrees=True) @ np.diag([0.2, 0.2, 1, 1])
                 for i in range(20)]
        received = []

        def consume():
            for item in source:
                received.append(item)
                if len(received) == len(frames):
                    break

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        deadline = time.time() + 60  # the client loads its CRC kernel before connecting
        while not server.is_connected() and time.time() < deadline:
            time.sleep(0.05)
        for i, (frame, pose) in enumerate(zip(frames, poses)):
            server.send_message(pyigtl.ImageMessage(frame[None], ijk_to_world_matrix=pose, timestamp=50.0 + i,
                                                    device_name="Image_Reference"), wait=True)
        consumer.join(15)
        source.close()
    finally:
        server.stop()
    assert len(received) == len(frames)
    for item, frame, pose in zip(received, frames, poses):
        assert np.array_equal(item.frame, frame)
        np.testing.assert_allclose(item.pose, pose, atol=1e-4)  # measured max |diff| 8.9e-07 (AMD EPYC); tolerance 114x that


def test_replay_v2_metadata_is_read_by_pyigtls_client():
    """Interop the other way: pyigtl's client decodes our header-v2 IMAGE/TRANSFORM with metadata."""
    import pyigtl

    sweep = _sweep(n=3)
    with ReplayServer(sweep, port=0, fps=5, header_version=2) as server:
        server.start()
        client = pyigtl.OpenIGTLinkClient("127.0.0.1", server.port)
        try:
            msg = client.wait_for_message("Image", timeout=10)
            tf = client.wait_for_message("ProbeToTracker", timeout=10)
        finally:
            client.stop()
    assert msg is not None and msg.header_version == 2
    assert msg.metadata["FrameNumber"] in ("0", "1", "2")
    k = int(msg.metadata["FrameNumber"])
    assert np.array_equal(msg.image[0], sweep.frames[k])
    assert tf.metadata["TransformStatus"] == "OK"


def test_replay_on_request_answers_stt_get_and_stp():
    """An on-request replay sends nothing until asked; our client asks (STT_IMAGE / GET_IMAGE)."""
    sweep = _sweep(n=20)
    with ReplayServer(sweep, port=0, fps=100, on_request=True) as server:
        server.start(accept_timeout=300)  # a hang guard (see above)
        source = IGTLSource(port=server.port, reconnect=False, request_interval=0.3)
        items = []
        for item in source:
            items.append(item)
            if len(items) == 20:
                break
        source.close()
        server.wait(5)
    assert np.array_equal(np.stack([it.frame for it in items]), sweep.frames)
    assert server.requests.get("STT_IMAGE") == 1 and source.stats.requests_sent >= 2


def test_fast_pose_interpolation_matches_geometry():
    """The receiver's two-sample SLERP equals geometry.interpolate_poses (scipy) to rounding."""
    from freehand3d.stream.igtl import _interpolate_pair

    rng = np.random.default_rng(4)
    worst = 0.0
    for k in range(60):
        p = rng.normal(0, 60, (2, 6))
        a, b = (geometry.params_to_matrix(x, "xyz", degrees=True) for x in p)
        if k % 3 == 0:  # nearly equal rotations take the linear branch
            b = a @ geometry.params_to_matrix([0.01, 0.02, 0, 0.1, 0, 0], "xyz", degrees=True)
        t = rng.uniform(0.01, 0.99)
        ref, ok = geometry.interpolate_poses([0.0, 1.0], np.stack([a, b]), [t])
        worst = max(worst, float(np.abs(_interpolate_pair(0.0, a, 1.0, b, t) - ref[0]).max()))
    assert worst < 1e-9  # measured 2.1e-11 over 2000 random pairs


def test_replay_answers_stp_and_stt_with_rts_and_get_status():
    """STP_IMAGE pauses the replay (acknowledged by RTS_IMAGE), STT_IMAGE resumes it, GET_STATUS gets a STATUS."""
    from freehand3d.stream.igtl import HEADER_SIZE, _parse_header, request_message

    sweep = _sweep(n=200, h=8, w=10)
    with ReplayServer(sweep, port=0, fps=100) as server:
        server.start()
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        buf = bytearray()

        def read_until(done, timeout=60.0):
            """Message types received until ``done(types)`` holds (or the timeout: no timing asserted)."""
            types = []
            end = time.time() + timeout
            sock.settimeout(0.05)
            while time.time() < end and not done(types):
                try:
                    buf.extend(sock.recv(65536))
                except socket.timeout:
                    pass
                while len(buf) >= HEADER_SIZE:
                    header = _parse_header(bytes(buf[:HEADER_SIZE]))
                    if len(buf) < HEADER_SIZE + header["body_size"]:
                        break
                    types.append(header["message_type"])
                    del buf[:HEADER_SIZE + header["body_size"]]
            return types

        first = read_until(lambda ts: ts.count("IMAGE") >= 3)
        assert first[0] == "STATUS" and first.count("IMAGE") >= 3
        sock.sendall(request_message("STP_IMAGE"))
        acked = read_until(lambda ts: "RTS_IMAGE" in ts)
        assert "RTS_IMAGE" in acked
        paused = read_until(lambda ts: False, timeout=0.5)
        assert "IMAGE" not in paused
        sock.sendall(request_message("GET_STATUS") + request_message("STT_IMAGE"))
        resumed = read_until(lambda ts: "STATUS" in ts and "RTS_IMAGE" in ts and ts.count("IMAGE") >= 5)
        assert "STATUS" in resumed and "RTS_IMAGE" in resumed and resumed.count("IMAGE") >= 5
        sock.close()


def test_one_shot_server_stops_listening_once_its_client_is_accepted():
    """A one-shot server must refuse other connections from the moment it accepts its client. CI saw
    a client reconnect in the instant between the session's end and the listener's close: the kernel
    queued the connection, the close then reset it, and the client counted a second reconnect."""
    server = ReplayServer(_sweep(n=4), port=0, fps=20, loop=True).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        assert sock.recv(58)  # the session's opening STATUS: the client has been accepted
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    server.close()


def test_session_end_does_not_reset_away_the_frames_a_polling_client_has_not_read():
    """A client that keeps sending requests (``request="auto"`` polls with a GET_IMAGE per image)
    and reads slowly: the session's last frames and its closing STATUS still arrive, then a clean
    end. Closing with the client's requests unread made the kernel send a reset, which discarded
    what the client had not read yet (seen as 185 of 188 frames, "missed 0")."""
    from freehand3d.stream.igtl import HEADER_SIZE, _parse_header, request_message

    n = 16
    frames = np.random.default_rng(5).integers(0, 256, (n, 512, 1024), dtype=np.uint8)  # 8 MB in all
    sweep = Sweep(frames, timestamps=np.arange(n) / 30.0)
    server = ReplayServer(sweep, port=0, fps=0).start(accept_timeout=300)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    done = threading.Event()

    def poll():  # requests all along, so some are always unread when the server ends the session
        while not done.is_set():
            with contextlib.suppress(OSError):
                sock.sendall(request_message("GET_IMAGE"))
            time.sleep(0.002)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    data, end = bytearray(), "EOF"
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            time.sleep(0.01)  # a lagging client: 64 kB per 10 ms
    except OSError as exc:
        end = repr(exc)
    finally:
        done.set()
        poller.join(5)
        sock.close()
        server.close()
    types = []
    while len(data) >= HEADER_SIZE:
        header = _parse_header(bytes(data[:HEADER_SIZE]))
        types.append(header["message_type"])
        del data[:HEADER_SIZE + header["body_size"]]
    assert end == "EOF" and not data
    assert types.count("IMAGE") == n and types[-1] == "STATUS"
