"""Kernel choice by measurement (cached), precision and threads options of predict/track."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from freehand3d.tracking import DualTrack, predict, track
from freehand3d.tracking import kernels as kmod

sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import refs  # noqa: E402


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEHAND3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(kmod, "_MEMO", {})
    return tmp_path


@pytest.fixture(scope="module")
def model():
    cfg = refs.small_config(local_widths=(4, 4, 8, 8), local_size=32, pool_grid=2)
    return refs.randomize(DualTrack(cfg), seed=8)


@pytest.fixture(scope="module")
def frames():
    return refs.gen_frames(40, 2024)[:10]


def test_auto_measures_each_layer_shape_once_and_caches_it_on_disk(cache, model, frames, monkeypatch):
    timed = []
    real = kmod._time_layer
    monkeypatch.setattr(kmod, "_time_layer", lambda *a, **k: timed.append(a[1]) or real(*a, **k))
    first = predict(frames, model, kernel="auto", threads=1)
    # 13 eligible convs of 4 distinct (Cin, Cout, H, W) shapes; each shape is timed once
    shapes = {s for _, _, s in kmod.eligible_layers(model.local_encoder.cnn, 32)}
    assert sorted(timed) == sorted(shapes)
    data = json.loads((cache / "conv_kernels.json").read_text())
    (key,) = data
    assert "1 threads" in key and "float32" in key and kmod.cpu_name() in key
    assert set(data[key]) == {"{}x{}@{}x{}".format(*s) for s in shapes}
    assert all(v["kernel"] in ("direct", "winograd", "winograd4") and v["direct_ms"] > 0 for v in data[key].values())
    assert all(v["winograd4_ms"] > 0 and "load_per_cpu" in v for v in data[key].values())
    plain = not kmod.channels_last_wins(data[key])
    assert first["info"]["kernels"] == {k: "direct (contiguous)" if plain else v["kernel"] for k, v in data[key].items()}
    assert all(v["contiguous_ms"] > 0 for v in data[key].values())
    # a new process (memo cleared) reads the file instead of measuring again
    monkeypatch.setattr(kmod, "_MEMO", {})
    timed.clear()
    again = predict(frames, model, kernel="auto", threads=1)
    assert timed == []
    np.testing.assert_array_equal(again["head_output"], first["head_output"])


def test_auto_follows_the_measurement(cache, model, frames, monkeypatch):
    # pretend F(2x2) wins clearly on the 8-channel layers and F(4x4) on the others' first shape
    def fake(conv, shape, dtype, rounds):
        return {"direct": 1.0, "winograd": 0.5 if shape[0] == 8 else 2.0,
                "winograd4": 0.6 if shape[0] == 8 else 0.4 if shape[2] == 16 else 1.0, "contiguous": 3.0}

    monkeypatch.setattr(kmod, "_time_layer", fake)
    out = predict(frames, model, kernel="auto", threads=1)
    shapes = {s for _, _, s in kmod.eligible_layers(model.local_encoder.cnn, 32)}
    assert any(s[0] == 8 for s in shapes) and any(s[0] != 8 and s[2] == 16 for s in shapes)
    assert {k: v for k, v in out["info"]["kernels"].items()} == {
        "{}x{}@{}x{}".format(*s): ("winograd" if s[0] == 8 else "winograd4" if s[2] == 16 else "direct")
        for s in shapes
    }
    direct = predict(frames, model, kernel="direct", threads=1)
    assert set(direct["info"]["kernels"].values()) == {"direct"}
    # float32 rounding only: the kernels sum in another order (measured 0 on an AMD EPYC: the
    # Winograd layers here are too small to change the rounded head; 1e-5 relative allows for it)
    np.testing.assert_allclose(out["head_output"], direct["head_output"], atol=1e-5 * np.abs(direct["head_output"]).max())


def test_auto_keeps_the_plain_layout_when_it_measures_faster(cache, model, frames, monkeypatch):
    # channels-last direct 1.0, Winograd 2.0, plain layout 0.5 (as on an AVX2 EPYC at 1 thread)
    monkeypatch.setattr(kmod, "_time_layer", lambda conv, shape, dtype, rounds: {
        "direct": 1.0, "winograd": 2.0, "winograd4": 1.5, "contiguous": 0.5})
    out = predict(frames, model, kernel="auto", threads=1)
    assert set(out["info"]["kernels"].values()) == {"direct (contiguous)"}
    direct = predict(frames, model, kernel="direct", threads=1)
    # rounding only (measured 0 here; 1e-5 relative as above)
    np.testing.assert_allclose(out["head_output"], direct["head_output"], atol=1e-5 * np.abs(direct["head_output"]).max())


def test_a_margin_keeps_the_direct_kernel_on_a_near_tie(cache, model, monkeypatch):
    tie = 1.0 / (kmod.MARGIN * 0.99)
    monkeypatch.setattr(kmod, "_time_layer", lambda conv, shape, dtype, rounds: {
        "direct": 1.0, "winograd": tie, "winograd4": tie, "contiguous": 3.0})
    cnn = model.local_encoder.cnn.fused_for_inference()
    assert set(kmod.apply_kernels(cnn, 32, "auto", 1).values()) == {"direct"}


def test_a_measurement_under_overload_is_taken_again_when_the_load_has_halved(cache, model, monkeypatch):
    timed = []
    monkeypatch.setattr(kmod, "_time_layer", lambda conv, shape, dtype, rounds: timed.append(shape) or {
        "direct": 1.0, "winograd": 2.0, "winograd4": 0.5, "contiguous": 3.0})
    cnn = model.local_encoder.cnn.fused_for_inference()
    n_shapes = len({s for _, _, s in kmod.eligible_layers(cnn, 32)})
    monkeypatch.setattr(kmod, "load_per_cpu", lambda: 6.0)  # overloaded: measured, cached with its load
    kmod.choose_kernels(cnn, 32, 1)
    assert len(timed) == n_shapes
    for load, again in ((4.0, False), (1.0, True)):  # re-measured only once the load has halved
        monkeypatch.setattr(kmod, "_MEMO", {})
        monkeypatch.setattr(kmod, "load_per_cpu", lambda: load)
        timed.clear()
        got = kmod.choose_kernels(cnn, 32, 1)
        assert len(timed) == (n_shapes if again else 0)
        assert {v["load_per_cpu"] for v in got.values()} == {1.0 if again else 6.0}
    # a quiet measurement stays, whatever the load later
    monkeypatch.setattr(kmod, "_MEMO", {})
    monkeypatch.setattr(kmod, "load_per_cpu", lambda: 0.1)
    timed.clear()
    kmod.choose_kernels(cnn, 32, 1)
    assert timed == []


def test_threads_apply_during_the_call_only(model, frames):
    before = torch.get_num_threads()
    seen = []
    real = model.decode

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    model.decode = spy
    try:
        out = predict(frames, model, kernel="direct", threads=1)
    finally:
        del model.decode
    assert seen == [1] and out["info"]["threads"] == 1
    assert torch.get_num_threads() == before


def test_bf16_precision_is_reported_and_close_to_fp32(model, frames):
    fp32 = predict(frames, model, kernel="direct", threads=1)
    with pytest.warns(UserWarning, match="bfloat16") if not torch.ops.mkldnn._is_mkldnn_bf16_supported() else _nothing():
        bf16 = predict(frames, model, precision="bf16", threads=1)
    assert bf16["info"]["precision"] == "bf16" and fp32["info"]["precision"] == "fp32"
    assert next(model.parameters()).dtype == torch.float32  # the head etc. stay float32
    scale = np.abs(fp32["head_output"]).max()
    diff = np.abs(bf16["head_output"] - fp32["head_output"]).max()
    # bfloat16 keeps 8 significant bits (relative 2^-9 = 2e-3 per rounding); this network's head
    # differs by 3.5e-4 relative (AMD EPYC); bound 3e-2 = 15 roundings. Not identical, so the bf16
    # path really ran
    assert 0 < diff < 3e-2 * scale


def test_fp64_precision_runs_in_double(model, frames):
    out = track(frames[:4], model, precision="fp64", spacing=(0.2, 0.2), kernel="direct", threads=1)
    assert out.metadata["DualTrackPrecision"] == "fp64"
    assert next(model.parameters()).dtype == torch.float64
    model.float()


def test_bad_options_are_refused(model, frames):
    with pytest.raises(ValueError, match="precision"):
        predict(frames, model, precision="fp16")
    with pytest.raises(ValueError, match="kernel"):
        predict(frames, model, kernel="fft")
    with pytest.raises(ValueError, match="threads"):
        predict(frames, model, threads=0)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_track_cli_says_which_precision_and_kernels_ran(tmp_path, cache):
    from _bad_inputs import run_cli

    from freehand3d.io import read_sweep, write_sweep
    from freehand3d.sweep import Sweep

    tiny = Path(__file__).resolve().parents[1] / "freehand3d" / "data" / "dualtrack-tiny.pt"
    frames = refs.gen_frames(40, 2024)[:3]
    write_sweep(Sweep(frames=frames, spacing=(0.2, 0.2), timestamps=np.arange(3) * 0.05), tmp_path / "s.igs.mha")
    res = run_cli(["track", str(tmp_path / "s.igs.mha"), "-c", str(tiny), "-o", str(tmp_path / "t.igs.mha"),
                   "--device", "cpu", "--kernel", "direct", "--threads", "1"])
    assert res.code == 0, res.stderr
    assert "(precision fp32, device cpu)" in res.stdout
    assert "local-CNN kernels:" in res.stdout and "winograd" not in res.stdout
    tracked = read_sweep(tmp_path / "t.igs.mha")
    assert tracked.metadata["DualTrackPrecision"] == "fp32"
