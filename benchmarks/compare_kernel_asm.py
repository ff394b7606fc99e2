"""Load-independent check that the uint8 compounding path compiles to the same machine code in two
source trees (issue 14: "speed of the uint8 path unchanged"; timings on a shared machine are noisy).

Each tree runs in a fresh process with its own empty numba cache; every compiled paste kernel
(trilinear splatting, nearest-neighbour record and apply phases; PLUS fixed point, PLUS double and
the fast float32 arithmetic; LATEST, MAXIMUM, MEAN) is compiled for uint8 frames and its x86
assembly is compared after replacing symbol names and local labels (which carry per-build ids).

    git worktree add --detach /tmp/before <old commit>
    python benchmarks/compare_kernel_asm.py --before /tmp/before [--after .]
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, re, sys
import numpy as np
from freehand3d.compound import _kernels as K
from freehand3d.compound.volume import OutputGrid, Reconstructor
frames = np.random.default_rng(0).integers(0, 256, (2, 8, 9)).astype(np.uint8)
mats = np.tile(np.diag([0.5, 0.5, 0.5, 1.0]), (2, 1, 1))
mats[:, :3, 3] = 2
grid = OutputGrid((0, 0, 0), (1, 1, 1), (10, 10, 10))
for method in ("nearest", "linear"):
    for mode in ("latest", "max", "mean"):
        for exact, fixed in ((False, True), (True, True), (True, False)):
            Reconstructor(grid, method, mode, exact_plus=exact, fixed_point=fixed).add_frames(frames, mats)

def norm(asm):
    out = []
    for line in asm.splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("."):
            continue
        line = re.sub(r"_ZN[\w$.]+", "SYM", line)
        line = re.sub(r"\.LBB\d+_\d+", "LBL", line)
        line = re.sub(r"\.LCPI\d+_\d+", "CONST", line)
        out.append(line)
    return out

res = {}
cases = [("splat", K._splat_kernel, (a, m)) for a in (0, 1, 2) for m in (0, 1, 2)]
cases += [("record", K._record_kernel, (a, m)) for a in (0, 1, 2) for m in (0, 1, 2)]
cases += [("apply", K._apply_kernel, (e, m)) for e in (False, True) for m in (0, 1, 2)]
for name, factory, args in cases:
    kernel = factory(*args)
    for sig in kernel.signatures:
        if "uint8" in str(sig):
            res[f"{name}{args}"] = norm(kernel.inspect_asm(sig))
json.dump(res, open(sys.argv[1], "w"))
"""


def _dump(tree: Path, out: Path) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS="1")
        subprocess.run([sys.executable, "-c", _CHILD, str(out)], env=env, check=True, capture_output=True)
    return json.loads(out.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = _dump(args.before.resolve(), Path(tmp) / "before.json")
        after = _dump(args.after.resolve(), Path(tmp) / "after.json")
    print(f"{'kernel (uint8 frames)':24} {'instructions before':>20} {'after':>8} {'differing lines':>16}")
    same = True
    for key in sorted(before):
        a, b = before[key], after.get(key, [])
        diff = [ln for ln in difflib.unified_diff(a, b, n=0) if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
        same &= not diff
        print(f"{key:24} {len(a):20d} {len(b):8d} {len(diff):16d}")
    print("identical machine code" if same else "THE COMPILED uint8 CODE DIFFERS")


if __name__ == "__main__":
    main()
