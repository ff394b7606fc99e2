"""freehand3d.batch / `freehand3d batch`: Dask runs give the same bytes as one-by-one runs, a corrupt
sweep fails alone, a second run skips finished outputs.

One 2-worker LocalCluster (processes, 1 thread each) serves the whole module; the tests reach it by
its tcp address, the path a user's own scheduler takes.
"""

from __future__ import annotations

import csv
import gc
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from freehand3d.batch import read_sweep_csv, run_batch
from freehand3d.cli import app
from freehand3d.errors import ConfigError, InputError
from freehand3d.io import write_sweep

distributed = pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CHECKPOINT = REPO / "freehand3d" / "data" / "dualtrack-tiny.pt"
runner = CliRunner(env={"COLUMNS": "250"})  # rich tables unwrapped


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The shipped tiny checkpoint when present, else a small random model."""
    if SHIPPED_CHECKPOINT.is_file():
        return SHIPPED_CHECKPOINT
    import torch

    from freehand3d.tracking import save_checkpoint
    from freehand3d.tracking.model import DualTrack, get_config

    torch.manual_seed(0)
    config = get_config("tiny").replace(name="tiny-batch-test", local_size=32, pool_grid=2, pool_patch=1,
                                        global_size=32, global_stride=4, max_positions=64)
    path = tmp_path_factory.mktemp("checkpoint") / "random-tiny.pt"
    save_checkpoint(DualTrack(config).eval(), path)
    return path


@pytest.fixture(scope="module")
def pinned_kernels(checkpoint, tmp_path_factory):
    """A private kernel-choice cache that pins the direct convolution on every layer, set before the
    cluster's workers start (they inherit it). ``kernel="auto"`` (what ``track`` and ``batch track``
    use) measures the kernels once per machine, under whatever load there is: four processes
    measuring at once on the tiny checkpoint picked winograd4 on 2 of its 4 layers in two of them
    and the direct conv in the other two (load average 14, 2 cores). The kernels used are written
    into the tracked sweep, so two workers measuring concurrently on a fresh machine, or one
    re-measuring (a choice made under overload is re-measured when the load halves), made the
    batch's bytes differ from the single-sweep command's. Pinned here, the comparison is of the
    same computation; the user's ~/.cache is not touched either."""
    import torch

    from freehand3d.tracking import kernels, load_dualtrack

    model = load_dualtrack(checkpoint)
    layers = kernels.eligible_layers(model.local_encoder.cnn.fused_for_inference(), model.config.local_size)
    entry = {"{}x{}@{}x{}".format(*shape): {**{f"{k}_ms": 1.0 for k in kernels.CANDIDATES}, "kernel": "direct",
                                            "load_per_cpu": None}  # None: never re-measured
             for _, _, shape in layers}
    folder = tmp_path_factory.mktemp("kernel-cache")
    data = {kernels._machine_key(threads, dtype): entry
            for threads in range(1, (os.cpu_count() or 1) + 1) for dtype in (torch.float32, torch.float64)}
    (folder / "conv_kernels.json").write_text(json.dumps(data))
    old = os.environ.get("FREEHAND3D_CACHE_DIR")
    os.environ["FREEHAND3D_CACHE_DIR"] = str(folder)
    kernels._MEMO.clear()  # choices this process measured earlier are not used meanwhile
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("FREEHAND3D_CACHE_DIR", None)
        else:
            os.environ["FREEHAND3D_CACHE_DIR"] = old
        kernels._MEMO.clear()


@pytest.fixture(scope="module")
def cluster(pinned_kernels):
    from freehand3d.batch import start_local_cluster

    with start_local_cluster(2) as local, distributed.Client(local) as client:
        # workers import the stack while this process simulates the test sweeps
        warming = [
            client.submit(importlib.import_module, module, workers=[worker], pure=False)
            for worker in client.nthreads()
            for module in ("freehand3d.compound.volume", "freehand3d.tracking")
        ]
        yield local.scheduler_address
        del warming


def _write_csv(path: Path, rows: list[dict]) -> Path:
    fields = list(rows[0])
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def recon_data(tmp_path_factory):
    """Three small simulated sweeps (relative paths in the CSV) and one corrupt file."""
    from freehand3d.simulate import simulate_freehand

    folder = tmp_path_factory.mktemp("recon")
    (folder / "sweeps").mkdir()
    rows = []
    for k in range(3):
        sweep, _ = simulate_freehand(n_frames=10, frame_size=(64, 80), seed=10 + k)
        write_sweep(sweep, folder / "sweeps" / f"s{k}.igs.mha")
        rows.append({"sweep_id": f"s{k}", "path": f"sweeps/s{k}.igs.mha", "split": "train" if k < 2 else "test"})
    (folder / "sweeps" / "broken.igs.mha").write_bytes(b"ObjectType = Image\nNDims = 3\n" + bytes(range(256)) * 4)
    rows.append({"sweep_id": "broken", "path": "sweeps/broken.igs.mha", "split": "test"})
    return _write_csv(folder / "sweeps.csv", rows)


@pytest.fixture(scope="module")
def track_data(tmp_path_factory, checkpoint, pinned_kernels):
    """Two 480 x 640 simulated sweeps (parts of one simulation), a checkpoint (the shipped tiny one when
    present, else a small random model) and a corrupt sweep."""
    from freehand3d.simulate import simulate_freehand

    folder = tmp_path_factory.mktemp("track")
    sweep, _ = simulate_freehand(n_frames=10, frame_size=(480, 640), seed=3)
    write_sweep(sweep.subset(np.arange(0, 6)), folder / "a.igs.mha")
    write_sweep(sweep.subset(np.arange(4, 10)), folder / "b.igs.mha")
    (folder / "c.igs.mha").write_bytes(b"not a sweep at all")
    rows = [{"sweep_id": n, "path": f"{n}.igs.mha"} for n in ("a", "b", "c")]
    return _write_csv(folder / "sweeps.csv", rows), checkpoint


# ------------------------------------------------------------------------------------------ CSV


def test_csv_paths_resolve_against_its_folder_and_split_filters(recon_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    entries = read_sweep_csv(recon_data)
    assert [e.sweep_id for e in entries] == ["s0", "s1", "s2", "broken"]
    assert entries[0].path == os.fspath(recon_data.parent / "sweeps" / "s0.igs.mha")
    assert Path(entries[0].path).is_file()
    assert [e.sweep_id for e in read_sweep_csv(recon_data, split="test")] == ["s2", "broken"]


@pytest.mark.parametrize(
    "text, problem",
    [
        ("id,path\na,x.mha\n", "sweep_id"),
        ("sweep_id,path\na,x.mha\na,y.mha\n", "twice"),
        ("sweep_id,path\n../up,x.mha\n", "safe file name"),
        ("sweep_id,path\na,\n", "no path"),
    ],
)
def test_csv_problems_name_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=problem) as info:
        read_sweep_csv(path)
    assert info.value.path == os.fspath(path)


def test_bad_options_raise_before_any_work(recon_data, tmp_path):
    with pytest.raises(ConfigError, match="checkpoint"):
        run_batch("track", recon_data, tmp_path / "o", scheduler="none")
    with pytest.raises(ConfigError, match="spacing"):
        run_batch("evaluate", recon_data, tmp_path / "o", scheduler="none", spacing=1.0)
    with pytest.raises(ConfigError, match="unknown operation"):
        run_batch("calibrate", recon_data, tmp_path / "o", scheduler="none")
    assert not (tmp_path / "o").exists()
    # the module's cluster fixture holds a Client of its own when a cluster test ran first (random
    # order, or this test run after them): only a Client made by the failing call is a leak
    before = {id(o) for o in gc.get_objects() if type(o) is distributed.Client}
    with pytest.raises(ConfigError, match="cannot connect to the Dask scheduler"):
        run_batch("reconstruct", recon_data, tmp_path / "o", scheduler="no-such-scheduler")
    assert not list((tmp_path / "o").glob("*.nrrd"))
    # the Client that failed to connect is gone now: left to a later GC pass, its __del__ once ran
    # inside the next LocalCluster start and deadlocked on distributed's loop lock
    assert not [o for o in gc.get_objects() if type(o) is distributed.Client and id(o) not in before]


# ---------------------------------------------------------------------------------- reconstruct


def test_reconstruct_batch_equals_one_by_one_and_resumes(cluster, recon_data, tmp_path):
    out = tmp_path / "vols"
    report = run_batch("reconstruct", recon_data, out, scheduler=cluster, spacing=0.4)
    status = {r.sweep_id: r.status for r in report.results}
    assert status == {"s0": "done", "s1": "done", "s2": "done", "broken": "failed"}
    assert report.n_workers == 2
    failure = report.failed[0]
    assert "broken.igs.mha" in failure.error and "\n" not in failure.error
    assert not (out / "broken.nrrd").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]

    # the same sweeps one by one through the single-sweep command give the same bytes
    for k in range(3):
        single = tmp_path / f"single{k}.nrrd"
        result = runner.invoke(
            app, ["reconstruct", str(recon_data.parent / "sweeps" / f"s{k}.igs.mha"), "-o", str(single), "--spacing", "0.4"]
        )
        assert result.exit_code == 0, result.output
        assert (out / f"s{k}.nrrd").read_bytes() == single.read_bytes()

    # the report, as JSON and CSV
    data = json.loads((out / "batch-reconstruct.json").read_text())
    assert data["counts"] == {"done": 3, "skipped": 0, "failed": 1}
    assert [s["sweep_id"] for s in data["sweeps"]] == ["s0", "s1", "s2", "broken"]
    with open(out / "batch-reconstruct.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["sweep_id"], r["status"]) for r in rows][-1] == ("broken", "failed")
    assert rows[0]["output"] == "s0.nrrd"

    # second run: finished outputs are skipped (not rewritten), the failed one is tried again
    mtimes = {k: (out / f"s{k}.nrrd").stat().st_mtime_ns for k in range(3)}
    (out / "s1.nrrd").unlink()
    again = run_batch("reconstruct", recon_data, out, scheduler=cluster, spacing=0.4)
    assert {r.sweep_id: r.status for r in again.results} == {
        "s0": "skipped", "s1": "done", "s2": "skipped", "broken": "failed"
    }
    assert (out / "s0.nrrd").stat().st_mtime_ns == mtimes[0]
    assert (out / "s1.nrrd").read_bytes() == (tmp_path / "single1.nrrd").read_bytes()


def test_in_process_runner_gives_the_same_bytes(cluster, recon_data, tmp_path):
    dask_out, local_out = tmp_path / "dask", tmp_path / "none"
    remote = run_batch("reconstruct", recon_data, dask_out, scheduler=cluster, split="train", method="linear", spacing=0.5)
    report = run_batch("reconstruct", recon_data, local_out, scheduler="none", split="train", method="linear", spacing=0.5)
    assert [r.status for r in remote.results] == ["done", "done"], remote.results
    assert [r.status for r in report.results] == ["done", "done"], report.results
    for k in range(2):
        assert (dask_out / f"s{k}.nrrd").read_bytes() == (local_out / f"s{k}.nrrd").read_bytes(), k


# ------------------------------------------------------------------------------ track, evaluate


def test_track_then_evaluate(cluster, track_data, tmp_path):
    import torch

    from freehand3d.tracking.workflows import evaluate_sweeps

    csv_path, checkpoint = track_data
    tracked = tmp_path / "tracked"
    report = run_batch("track", csv_path, tracked, scheduler=cluster, checkpoint=checkpoint, device="cpu")
    assert [r.status for r in report.results] == ["done", "done", "failed"]
    assert "c.igs.mha" in report.failed[0].error

    # one by one through the single-sweep command (1 torch thread, like every batch task)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name in ("a", "b"):
            single = tmp_path / f"{name}-single.igs.mha"
            result = runner.invoke(
                app, ["track", str(csv_path.parent / f"{name}.igs.mha"), "-c", str(checkpoint), "-o", str(single), "--device", "cpu"]
            )
            assert result.exit_code == 0, result.output
            assert (tracked / f"{name}.igs.mha").read_bytes() == single.read_bytes()
    finally:
        torch.set_num_threads(before)

    # evaluate the batch's predictions against the simulator's poses
    metrics_dir = tmp_path / "metrics"
    ev = run_batch("evaluate", csv_path, metrics_dir, scheduler=cluster, predictions=tracked)
    assert [r.status for r in ev.results] == ["done", "done", "failed"]
    for name in ("a", "b"):
        record = json.loads((metrics_dir / f"{name}.json").read_text())
        expected = evaluate_sweeps(tracked / f"{name}.igs.mha", csv_path.parent / f"{name}.igs.mha")
        assert record["sweep_id"] == name
        assert record["metrics"]["GPE"] == pytest.approx(expected["GPE"], rel=1e-12)  # measured: exact (max |diff| 0, AMD EPYC)
        assert record["metrics"]["n_frames"] == 6
    summary = ev.metrics_summary()
    gpes = [json.loads((metrics_dir / f"{n}.json").read_text())["metrics"]["GPE"] for n in ("a", "b")]
    assert summary["GPE"]["mean"] == pytest.approx(np.mean(gpes)) and summary["GPE"]["n"] == 2  # measured: exact (max |diff| 0, AMD EPYC)
    with open(metrics_dir / "batch-evaluate.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["GPE"]) == pytest.approx(gpes[0])  # measured: exact (max |diff| 0, AMD EPYC)

    # resumed: skipped sweeps still bring their metrics into the summary
    again = run_batch("evaluate", csv_path, metrics_dir, scheduler="none", predictions=tracked)
    assert [r.status for r in again.results] == ["skipped", "skipped", "failed"]
    assert again.metrics_summary()["GPE"]["mean"] == pytest.approx(summary["GPE"]["mean"])  # measured: exact (max |diff| 0, AMD EPYC)

    # the same through the CLI: track resumes (nothing left but the corrupt sweep), evaluate prints the table
    result = runner.invoke(app, ["batch", "track", "--csv", str(csv_path), "--out", str(tracked), "-c", str(checkpoint),
                                 "--scheduler", cluster, "--device", "cpu"])
    assert result.exit_code == 1 and "0 done, 2 skipped (output existed), 1 failed" in result.output, result.output
    result = runner.invoke(app, ["batch", "evaluate", "--csv", str(csv_path), "--out", str(tmp_path / "cli-metrics"),
                                 "--predictions", str(tracked), "--scheduler", "none"])
    assert result.exit_code == 1, result.output
    assert "metrics over 2 sweeps" in result.output and "GPE" in result.output
    assert f"{summary['GPE']['mean']:.3f}" in result.output


# ------------------------------------------------------------------------------------------ CLI


def test_cli_table_report_and_exit_code(cluster, recon_data, tmp_path):
    out = tmp_path / "cli"
    args = ["batch", "reconstruct", "--csv", str(recon_data), "--out", str(out), "--scheduler", cluster, "--spacing", "0.6"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # one sweep failed
    assert "broken" in result.output and "failed" in result.output
    assert "3 done, 0 skipped (output existed), 1 failed" in result.output
    assert sorted(p.name for p in out.glob("*.nrrd")) == ["s0.nrrd", "s1.nrrd", "s2.nrrd"]
    result = runner.invoke(app, args + ["--split", "train"])
    assert result.exit_code == 0, result.output
    assert "0 done, 2 skipped" in result.output


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "freehand3d", "batch", "reconstruct", "--csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"freehand3d: error: {tmp_path / 'missing.csv'}: file not found"]


@pytest.mark.slow
def test_cli_default_local_cluster(recon_data, tmp_path):
    out = tmp_path / "local"
    result = runner.invoke(
        app, ["batch", "reconstruct", "--csv", str(recon_data), "--out", str(out), "--workers", "2", "--split", "train"]
    )
    assert result.exit_code == 0, result.output
    assert "2 done" in result.output and "2 workers" in result.output
    assert sorted(p.name for p in out.glob("*.nrrd")) == ["s0.nrrd", "s1.nrrd"]
