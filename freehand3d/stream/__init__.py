"""Live OpenIGTLink input (PlusServer, 3D Slicer): lossless source, replay server, live compounding."""

from freehand3d.stream.igtl import IGTLSource, ReplayServer, StreamItem, StreamStats, send_volume
from freehand3d.stream.live import LiveResult, Recorder, run_live

__all__ = ["IGTLSource", "ReplayServer", "StreamItem", "StreamStats", "send_volume", "run_live", "LiveResult", "Recorder"]
