"""Bad inputs of ``freehand3d simulate nwire|sweep``: exit 2, one error line, no partial output
(neither the sweep nor its truth file), checked before the simulation starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from _bad_inputs import Case, check_case

NW = ["simulate", "nwire", "--frames", "2"]
SW = ["simulate", "sweep", "--frames", "3", "--size", "16x16"]


def _write(name: str, content: str | bytes):
    def setup(tmp: Path) -> None:
        (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return setup


def _dir(name: str):
    return lambda tmp: (tmp / name).mkdir()


CASES = [
    # outputs
    Case("nwire-unknown-format", [*NW, "-o", "{tmp}/cal.txt"], mention=["cal.txt"]),
    Case("nwire-output-is-folder", [*NW, "-o", "{tmp}/cal.igs.mha"], setup=_dir("cal.igs.mha"), mention=["cal.igs.mha"]),
    Case("nwire-truth-is-folder", [*NW, "-o", "{tmp}/cal.igs.mha"], setup=_dir("cal.igs.mha.truth.npz"), mention=["truth"]),
    Case("nwire-parent-is-file", [*NW, "-o", "{tmp}/f/cal.igs.mha"], setup=_write("f", "x"), mention=["f"]),
    Case("nwire-preview-not-png", [*NW, "-o", "{tmp}/cal.igs.mha", "--preview", "{tmp}/p.gif"], mention=["p.gif"]),
    Case("sweep-unknown-format", [*SW, "-o", "{tmp}/sw.avi"], mention=["sw.avi"]),
    Case("sweep-no-extension", [*SW, "-o", "{tmp}/sweep"], mention=["sweep"]),
    Case("sweep-output-is-folder", [*SW, "-o", "{tmp}/s.h5"], setup=_dir("s.h5"), mention=["s.h5"]),
    Case("sweep-preview-is-folder", [*SW, "-o", "{tmp}/s.h5", "--preview", "{tmp}/pv.png"], setup=_dir("pv.png"), mention=["pv.png"]),
    # numbers and names
    Case("nwire-zero-frames", ["simulate", "nwire", "--frames", "0", "-o", "{tmp}/c.igs.mha"]),
    Case("nwire-negative-frames", ["simulate", "nwire", "--frames", "-5", "-o", "{tmp}/c.igs.mha"]),
    Case("nwire-noise-word", [*NW, "-o", "{tmp}/c.igs.mha", "--noise", "loud"], mention=["--noise"]),
    Case("nwire-noise-negative", [*NW, "-o", "{tmp}/c.igs.mha", "--noise", "-1"], mention=["--noise"]),
    Case("nwire-noise-nan", [*NW, "-o", "{tmp}/c.igs.mha", "--noise", "nan"], mention=["--noise"]),
    Case("nwire-corrupt-above-one", [*NW, "-o", "{tmp}/c.igs.mha", "--corrupt-poses", "1.5"]),
    Case("nwire-missing-negative", [*NW, "-o", "{tmp}/c.igs.mha", "--missing-phantom", "-1"]),
    Case("nwire-unknown-phantom", [*NW, "-o", "{tmp}/c.igs.mha", "--phantom", "fcal-9.9"], mention=["fcal-9.9"]),
    Case("nwire-phantom-yaml-missing", [*NW, "-o", "{tmp}/c.igs.mha", "--phantom", "{tmp}/ph.yaml"], mention=["ph.yaml"]),
    Case("nwire-phantom-yaml-garbage", [*NW, "-o", "{tmp}/c.igs.mha", "--phantom", "{tmp}/ph.yaml"],
         setup=_write("ph.yaml", "wires: [[[1, 2"), mention=["ph.yaml"]),
    Case("nwire-phantom-xml-garbage", [*NW, "-o", "{tmp}/c.igs.mha", "--phantom", "{tmp}/ph.xml"],
         setup=_write("ph.xml", "<PlusConfiguration>"), mention=["ph.xml"]),
    Case("sweep-one-frame", ["simulate", "sweep", "--frames", "1", "-o", "{tmp}/s.igs.mha"]),
    Case("sweep-size-word", [*SW[:4], "--size", "big", "-o", "{tmp}/s.igs.mha"], mention=["--size"]),
    Case("sweep-size-tiny", [*SW[:4], "--size", "4x4", "-o", "{tmp}/s.igs.mha"], mention=["--size"]),
    Case("sweep-size-three-numbers", [*SW[:4], "--size", "16x16x3", "-o", "{tmp}/s.igs.mha"], mention=["--size"]),
    Case("sweep-device-unknown", [*SW, "-o", "{tmp}/s.igs.mha", "--device", "quantum"], mention=["quantum"]),
    Case("sweep-seed-text", [*SW, "-o", "{tmp}/s.igs.mha", "--seed", "lucky"]),
    Case("no-subcommand-args", ["simulate", "sweep"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, tmp_path):
    check_case(case, tmp_path)
