"""Live OpenIGTLink input (PlusServer, 3D Slicer): lossless source, replay server, live compounding,
write-through recording."""

from freehand3d.stream.igtl import IGTLSource, ReplayServer, StreamItem, StreamStats, send_volume
from freehand3d.stream.live import LiveResult, Stage, run_live
from freehand3d.stream.recorder import SequenceRecorder, recover_recording

__all__ = ["IGTLSource", "ReplayServer", "StreamItem", "StreamStats", "send_volume", "run_live", "LiveResult",
           "Stage", "SequenceRecorder", "recover_recording"]
