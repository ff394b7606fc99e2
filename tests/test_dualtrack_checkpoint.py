"""DualTrack checkpoints: official key map, strict loading with reports, our own format."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from freehand3d.errors import CheckpointError
from freehand3d.tracking import PRESETS, DualTrack, load_dualtrack, save_checkpoint
from freehand3d.tracking.checkpoint import official_key_map, official_to_ours


sys.path.insert(0, str(Path(__file__).parent))
from _dualtrack_refs import refs  # noqa: E402


def _manifest(preset):
    return refs.make_weights_module.read_manifest(str(refs.MANIFESTS[preset]))


def _placeholder_state(preset):
    """A state_dict with the manifest's keys and shapes (values irrelevant, cheap to build)."""
    # expanded scalars: full shapes, one element of storage (also on disk)
    return {
        k: torch.zeros((), dtype=torch.int64) if k.endswith("num_batches_tracked") else torch.ones(1).expand(shape)
        for k, shape in _manifest(preset)
    }


@pytest.mark.parametrize("preset", ["dualtrack-2024", "dualtrack-tusrec2025"])
def test_both_official_manifests_map_completely_with_equal_shapes(preset):
    manifest = _manifest(preset)
    assert len(manifest) == 854
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in DualTrack(preset).state_dict().items()}
    mapping = official_key_map(k for k, _ in manifest)
    assert len(mapping) == 854  # every official key has a target
    assert sorted(mapping.values()) == sorted(ours)  # ... and every one of ours a source, 1:1
    for key, shape in manifest:
        target, conversion = official_to_ours(key)
        expected = shape[:2] + shape[3:] if conversion == "squeeze_depth" else shape
        assert ours[target] == tuple(expected), key
    squeezed = [k for k, _ in manifest if official_to_ours(k)[1] == "squeeze_depth"]
    assert len(squeezed) == 2 + 16 + 3  # global CNN: stem convs, block convs, downsamples


def test_official_weights_load_strictly_and_land_in_the_right_places():
    weights = refs.official_weights("dualtrack-2024")
    model = load_dualtrack(weights)  # preset inferred from the 1024-row frame table
    report = model.load_report
    assert model.preset == "dualtrack-2024" and report.layout == "official"
    assert report.ok and report.loaded == 854 and not report.allowed
    assert not model.training
    sd = model.state_dict()
    pairs = {
        "global_encoder.backbone.0.backbone.layer2.0.downsample.0.weight": "global_encoder.cnn.layers.1.0.downsample.0.weight",
        "local_encoder.0.backbone.module.backbone.module.backbone.layer3.1.conv2.1.running_var": "local_encoder.cnn.layers.2.1.bn2.running_var",
        "local_encoder.0.temporal_encoder.encoder.layer.2.attention.self.distance_embedding.weight": "local_encoder.temporal.layers.2.self_attn.relative_table",
        "fusion_module.module.layer.11.crossattention.output.LayerNorm.bias": "fusion.layers.11.cross_norm.bias",
        "local_encoder.0.backbone.module.vit.encoder.layer.3.layernorm_after.weight": "local_encoder.pool.layers.3.mlp_norm.weight",
        "local_encoder.1.weight": "local_encoder.proj.weight",
        "head.fc.bias": "head.bias",
    }
    for official, ours in pairs.items():
        assert torch.equal(sd[ours].reshape(weights[official].shape), weights[official]), official


def test_wrapped_and_prefixed_checkpoints_load_from_disk(tmp_path):
    state = _placeholder_state("dualtrack-tusrec2025")
    training = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}, "epoch": 3, "best_score": 1.5}
    torch.save(training, tmp_path / "train.pt")
    model = load_dualtrack(tmp_path / "train.pt")
    assert model.preset == "dualtrack-tusrec2025" and model.load_report.ok
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pt")
    assert load_dualtrack(str(tmp_path / "ddp.pt"), preset="dualtrack-tusrec2025").load_report.loaded == 854


def test_wrong_preset_names_the_mismatched_keys():
    state = _placeholder_state("dualtrack-tusrec2025")
    with pytest.raises(CheckpointError) as err:
        load_dualtrack(state, preset="dualtrack-2024")
    message = str(err.value)
    assert "17 shape-mismatched" in message
    assert "global_encoder.pos_emb.weight (4096, 512) vs global_encoder.frame_position.weight (1024, 512)" in message
    assert "distance_embedding" in message


def test_non_strict_loading_loads_what_fits_and_warns():
    source = refs.randomize(DualTrack("tiny"), seed=9).state_dict()
    del source["head.bias"]
    with pytest.warns(UserWarning, match="1 missing: head.bias"):
        model = load_dualtrack(source, strict=False)
    assert model.load_report.loaded == len(source)
    assert torch.equal(model.state_dict()["head.weight"], source["head.weight"])
    assert torch.isfinite(model.state_dict()["head.bias"]).all()  # freshly initialised, not garbage


def test_only_the_12_output_global_head_is_allowed_by_default():
    state = _placeholder_state("dualtrack-2024")
    state["global_encoder.fc.weight"] = torch.zeros(12, 512)
    state["global_encoder.fc.bias"] = torch.zeros(12)
    model = load_dualtrack(state)
    assert model.load_report.ok
    assert sorted(model.load_report.allowed) == ["global_encoder.fc.bias", "global_encoder.fc.weight"]
    with pytest.raises(CheckpointError, match="global_encoder.fc.weight"):
        load_dualtrack(state, allow=())
    state["global_encoder.fc.weight"] = torch.zeros(7, 512)  # not the documented variant
    with pytest.raises(CheckpointError, match=r"global_encoder.fc.weight \(7, 512\)"):
        load_dualtrack(state)


def test_missing_and_unexpected_keys_are_named_never_dropped():
    state = _placeholder_state("dualtrack-2024")
    del state["head.fc.weight"]
    state["fusion_module.module.layer.12.output.dense.weight"] = torch.zeros(512, 1024)
    with pytest.raises(CheckpointError) as err:
        load_dualtrack(state)
    assert "1 missing: head.weight" in str(err.value)
    assert "1 unexpected: fusion_module.module.layer.12.output.dense.weight" in str(err.value)
    model = load_dualtrack(state, allow=["head.weight", "fusion_module.module.layer.12.*"])
    assert model.load_report.ok and len(model.load_report.allowed) == 2


def test_own_checkpoint_round_trip_keeps_weights_config_and_metadata(tmp_path):
    model = refs.randomize(DualTrack("tiny"), seed=4)
    path = tmp_path / "tiny.pt"
    save_checkpoint(model, path, epoch=7, note="unit test")
    assert path.stat().st_size < 20e6
    assert not list(tmp_path.glob(".tmp-*"))  # atomic write leaves no temp file
    raw = torch.load(path, weights_only=True)  # plain layout, no pickled objects
    assert raw["format"] == "freehand3d.dualtrack" and raw["preset"] == "tiny"
    loaded = load_dualtrack(path)
    assert loaded.preset == "tiny" and loaded.load_report.layout == "freehand3d" and loaded.load_report.ok
    assert loaded.checkpoint_metadata == {"epoch": 7, "note": "unit test"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # a custom configuration travels with the checkpoint
    small = DualTrack(refs.small_config())
    save_checkpoint(small, tmp_path / "small.pt")
    assert load_dualtrack(tmp_path / "small.pt").config == small.config
    # ... and a flat state_dict of ours still finds its preset by shape
    assert load_dualtrack(model.state_dict()).preset == "tiny"


def test_unreadable_sources_raise_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_dualtrack(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"), pytest.warns(UserWarning):
        load_dualtrack(bad)
    with pytest.raises(CheckpointError, match="neither the official"):
        load_dualtrack({"encoder.weight": torch.zeros(2)})


def test_a_stored_config_wins_over_the_preset_of_the_same_name(tmp_path):
    # a "tiny" trained with the official input sizes (16x16 CNN maps) still loads with preset="tiny"
    config = PRESETS["tiny"].replace(local_size=256, pool_grid=16, global_size=224)
    model = refs.randomize(DualTrack(config), seed=5)
    save_checkpoint(model, tmp_path / "tiny256.pt")
    loaded = load_dualtrack(tmp_path / "tiny256.pt", preset="tiny")
    assert loaded.config == config and loaded.load_report.ok
    assert torch.equal(loaded.state_dict()["local_encoder.pool.position"], model.state_dict()["local_encoder.pool.position"])
    # a preset of another name is still checked against the weights
    with pytest.raises(CheckpointError, match="shape-mismatched"):
        load_dualtrack(tmp_path / "tiny256.pt", preset="dualtrack-2024")
