"""Load official DualTrack checkpoints through an explicit key map, and save our own.

Official layout -> ours (SPEC §7). Every official state_dict key is translated by the rules below;
nothing is matched by position or guessed:

=====================================================================  ===============================
official prefix                                                        ours
=====================================================================  ===============================
``local_encoder.0.backbone.module.backbone.module.backbone.``          ``local_encoder.cnn.``
``local_encoder.0.backbone.module.vit.``                               ``local_encoder.pool.``
``local_encoder.0.backbone.module.fc.``                                ``local_encoder.token_head.``
``local_encoder.0.temporal_encoder.encoder.layer.{i}.``                ``local_encoder.temporal.layers.{i}.``
``local_encoder.0.temporal_encoder.fc.``                               ``local_encoder.pose_head.``
``local_encoder.1.weight``                                             ``local_encoder.proj.weight``
``global_encoder.backbone.0.backbone.``                                ``global_encoder.cnn.`` (Conv3d
                                                                       weights (O,I,1,k,k) squeezed to
                                                                       Conv2d (O,I,k,k))
``global_encoder.{proj, pos_emb, fc}.``                                ``global_encoder.{proj, frame_position, pose_head}.``
``global_encoder.bert.layer.{i}.``                                     ``global_encoder.layers.{i}.``
``fusion_module.module.layer.{i}.``                                    ``fusion.layers.{i}.``
``head.fc.``                                                           ``head.``
=====================================================================  ===============================

Inside the CNNs ``layer{L}.{b}.conv{c}.0`` -> ``layers.{L-1}.{b}.conv{c}``, ``conv{c}.1`` -> ``bn{c}``;
inside transformer layers the BERT / ViT sub-names map to ``self_attn``/``self_out``/``self_norm``,
``cross_attn``/``cross_out``/``cross_norm``, ``mlp_in``/``mlp_out``/``mlp_norm`` (post-LN) and
``attn_norm``/``attn``/``attn_out``/``mlp_norm``/``mlp_in``/``mlp_out`` (pre-LN); relative tables
``attention.self.distance_embedding.weight`` -> ``self_attn.relative_table``.

Our checkpoint layout (:func:`save_checkpoint`), loadable with ``torch.load(weights_only=True)``::

    {"format": "freehand3d.dualtrack", "format_version": 1, "preset": str, "config": dict,
     "state_dict": {our key: tensor}, "metadata": dict}
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from freehand3d.errors import CheckpointError
from freehand3d.tracking.model.dualtrack import DualTrack
from freehand3d.tracking.model.presets import PRESETS, DualTrackConfig, get_config

FORMAT_TAG = "freehand3d.dualtrack"
FORMAT_VERSION = 1

#: Mismatches accepted unless the caller passes ``allow`` explicitly: a third-party note says the
#: released 2024 file may hold the unused global 6-DoF head with 12 outputs (SPEC §4).
DEFAULT_ALLOW = ("global_encoder.fc.weight", "global_encoder.fc.bias")

#: Leading prefixes added by torch.compile, DataParallel/DDP or training wrappers.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.", "model.")

_POST_LN_NAMES = {
    "attention.self.query": "self_attn.query",
    "attention.self.key": "self_attn.key",
    "attention.self.value": "self_attn.value",
    "attention.output.dense": "self_out",
    "attention.output.LayerNorm": "self_norm",
    "crossattention.self.query": "cross_attn.query",
    "crossattention.self.key": "cross_attn.key",
    "crossattention.self.value": "cross_attn.value",
    "crossattention.output.dense": "cross_out",
    "crossattention.output.LayerNorm": "cross_norm",
    "intermediate.dense": "mlp_in",
    "output.dense": "mlp_out",
    "output.LayerNorm": "mlp_norm",
}

_PRE_LN_NAMES = {
    "layernorm_before": "attn_norm",
    "attention.attention.query": "attn.query",
    "attention.attention.key": "attn.key",
    "attention.attention.value": "attn.value",
    "attention.output.dense": "attn_out",
    "layernorm_after": "mlp_norm",
    "intermediate.dense": "mlp_in",
    "output.dense": "mlp_out",
}

_VIT_EMBEDDINGS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "position",
    "embeddings.patch_embeddings.projection.weight": "patch.weight",
    "embeddings.patch_embeddings.projection.bias": "patch.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}

_CNN_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv1|conv2|downsample)\.(\d)\.(.+)$")
_LAYER = re.compile(r"^layer\.(\d+)\.(.+)$")


def _translate_cnn(rest: str) -> str | None:
    if rest.startswith("stem."):
        return rest  # stem.{0,1,3,4} keep their indices
    m = _CNN_BLOCK.match(rest)
    if not m:
        return None
    layer, block, part, index, leaf = m.groups()
    base = f"layers.{int(layer) - 1}.{block}."
    if part == "downsample":
        return f"{base}downsample.{index}.{leaf}"
    number = part[-1]
    return f"{base}{'conv' if index == '0' else 'bn'}{number}.{leaf}"


def _translate_layer(rest: str, names: Mapping[str, str]) -> str | None:
    m = _LAYER.match(rest)
    if not m:
        return None
    index, sub = m.groups()
    if sub == "attention.self.distance_embedding.weight":
        return f"layers.{index}.self_attn.relative_table"  # a bare parameter on our side
    module, _, leaf = sub.rpartition(".")
    if module not in names:
        return None
    return f"layers.{index}.{names[module]}.{leaf}"


def official_to_ours(key: str) -> tuple[str, str] | None:
    """Translate one official state_dict key.

    Returns
    -------
    (our key, conversion) with conversion ``"same"`` or ``"squeeze_depth"`` (5-D Conv3d weight of
    depth 1 -> 4-D Conv2d weight), or None when the key is not part of the official layout.
    """
    rules = [
        ("local_encoder.0.backbone.module.backbone.module.backbone.", "local_encoder.cnn.", _translate_cnn),
        ("global_encoder.backbone.0.backbone.", "global_encoder.cnn.", _translate_cnn),
        ("local_encoder.0.backbone.module.vit.encoder.", "local_encoder.pool.", lambda r: _translate_layer(r, _PRE_LN_NAMES)),
        ("local_encoder.0.backbone.module.vit.", "local_encoder.pool.", _VIT_EMBEDDINGS.get),
        ("local_encoder.0.temporal_encoder.encoder.", "local_encoder.temporal.", lambda r: _translate_layer(r, _POST_LN_NAMES)),
        ("global_encoder.bert.", "global_encoder.", lambda r: _translate_layer(r, _POST_LN_NAMES)),
        ("fusion_module.module.", "fusion.", lambda r: _translate_layer(r, _POST_LN_NAMES)),
    ]
    exact = {
        "local_encoder.0.backbone.module.fc.weight": "local_encoder.token_head.weight",
        "local_encoder.0.backbone.module.fc.bias": "local_encoder.token_head.bias",
        "local_encoder.0.temporal_encoder.fc.weight": "local_encoder.pose_head.weight",
        "local_encoder.0.temporal_encoder.fc.bias": "local_encoder.pose_head.bias",
        "local_encoder.1.weight": "local_encoder.proj.weight",
        "global_encoder.proj.weight": "global_encoder.proj.weight",
        "global_encoder.proj.bias": "global_encoder.proj.bias",
        "global_encoder.pos_emb.weight": "global_encoder.frame_position.weight",
        "global_encoder.fc.weight": "global_encoder.pose_head.weight",
        "global_encoder.fc.bias": "global_encoder.pose_head.bias",
        "head.fc.weight": "head.weight",
        "head.fc.bias": "head.bias",
    }
    if key in exact:
        return exact[key], "same"
    for prefix, target, translate in rules:
        if key.startswith(prefix):
            rest = translate(key[len(prefix) :])
            if rest is None:
                return None
            ours = target + rest
            squeeze = target == "global_encoder.cnn." and ours.endswith(".weight") and (
                ".conv" in ours or ".downsample.0." in ours or re.search(r"stem\.[03]\.weight$", ours)
            )
            return ours, "squeeze_depth" if squeeze else "same"
    return None


def official_key_map(official_keys) -> dict[str, str]:
    """``{official key: our key}`` for every translatable key of ``official_keys``."""
    out = {}
    for key in official_keys:
        hit = official_to_ours(key)
        if hit is not None:
            out[key] = hit[0]
    return out


def _convert(tensor: torch.Tensor, conversion: str) -> torch.Tensor:
    if conversion == "squeeze_depth" and tensor.ndim == 5 and tensor.shape[2] == 1:
        return tensor[:, :, 0]
    return tensor


# ----------------------------------------------------------------------------- reading


@dataclass
class LoadReport:
    """What happened to every key while loading a checkpoint.

    Attributes
    ----------
    layout : ``"official"`` or ``"freehand3d"``.
    preset : preset the model was built with.
    missing : our keys that got no value from the checkpoint.
    unexpected : checkpoint keys with no place in the model.
    mismatched : (checkpoint key, its shape, our key, our shape) for shape conflicts.
    allowed : keys of the three lists above that the allow-list accepted (not loaded).
    loaded : number of tensors loaded.
    """

    layout: str
    preset: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, str, tuple]] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        """One paragraph naming the problem keys (the first ``limit`` of each kind)."""

        def names(items):
            shown = ", ".join(items[:limit])
            return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")

        parts = []
        if self.mismatched:
            shapes = [f"{src} {tuple(s)} vs {dst} {tuple(d)}" for src, s, dst, d in self.mismatched]
            parts.append(f"{len(self.mismatched)} shape-mismatched: {names(shapes)}")
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {names(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected: {names(self.unexpected)}")
        if self.allowed:
            parts.append(f"{len(self.allowed)} allowed and skipped: {names(self.allowed)}")
        return "; ".join(parts) if parts else f"all {self.loaded} tensors loaded"


def _read_source(source, allow_pickle: bool):
    if isinstance(source, Mapping):
        return source, None
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint file not found", path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True), path
    except Exception as safe_error:  # noqa: BLE001 - retried below or reported
        if not allow_pickle:
            raise CheckpointError(
                f"cannot read the checkpoint safely ({type(safe_error).__name__}); "
                "pass allow_pickle=True only if you trust the file",
                path,
            ) from None
    try:
        # the official training checkpoints pickle their config/optimizer objects
        warnings.warn(f"{path}: loading with full unpickling (weights_only=False)", stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False), path
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"not a readable torch checkpoint ({type(exc).__name__}: {exc})", path) from None


def _strip_wrappers(state: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = str(key)
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _unwrap(raw, path) -> tuple[dict, DualTrackConfig | None, dict]:
    """-> (state_dict, config stored in our format or None, metadata)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(raw).__name__}, not a state_dict", path)
    if raw.get("format") == FORMAT_TAG:
        version = raw.get("format_version", 1)
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {version} is newer than this freehand3d reads", path)
        try:
            config = DualTrackConfig.from_dict(dict(raw["config"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"invalid model config in checkpoint ({exc})", path) from None
        return dict(raw["state_dict"]), config, dict(raw.get("metadata") or {})
    for wrapper in ("model", "state_dict", "model_state_dict"):
        if isinstance(raw.get(wrapper), Mapping):
            return dict(raw[wrapper]), None, {}
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError("no tensors found (expected a state_dict or a dict with 'model')", path)
    return dict(raw), None, {}


def _detect_layout(state: Mapping, path) -> str:
    if any(k.startswith(("local_encoder.0.", "fusion_module.")) for k in state):
        return "official"
    if any(k.startswith(("local_encoder.cnn.", "fusion.layers.")) for k in state):
        return "freehand3d"
    raise CheckpointError("keys match neither the official DualTrack layout nor ours", path)


def infer_preset(state: Mapping, layout: str = "official") -> str:
    """Preset from tensor shapes: the rows of the global frame-index table (1024 or 4096) and the
    feature width (512 for the official presets)."""
    key = "global_encoder.pos_emb.weight" if layout == "official" else "global_encoder.frame_position.weight"
    if key not in state:
        raise KeyError(key)
    rows, width = tuple(state[key].shape)
    for name, cfg in PRESETS.items():
        if cfg.max_positions == rows and cfg.feature_dim == width and (name != "tiny" or layout != "official"):
            return name
    raise ValueError(f"no preset has a {rows}x{width} frame-index table")


def _is_allowed(names, patterns) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for n in names for p in patterns)


def load_dualtrack(
    source,
    preset=None,
    strict: bool = True,
    allow=None,
    device=None,
    allow_pickle: bool = True,
) -> DualTrack:
    """Build a :class:`DualTrack` and load weights into it.

    Parameters
    ----------
    source : path of a ``.pt`` file, or a state_dict / checkpoint dict already in memory. Accepted:
        an official flat state_dict, an official training dict (``{"model": ...}``), our own
        checkpoint (:func:`save_checkpoint`); leading ``_orig_mod.``, ``module.``, ``model.``
        prefixes are stripped.
    preset : "dualtrack-2024", "dualtrack-tusrec2025", "tiny" or a :class:`DualTrackConfig`;
        None infers it from the checkpoint (our format stores its config; official files are told
        apart by the rows of ``global_encoder.pos_emb.weight``). A preset name equal to the name
        stored in one of our checkpoints uses the stored config (its exact sizes); any other
        preset is checked strictly against the weights.
    strict : raise :class:`~freehand3d.errors.CheckpointError` naming every missing, unexpected
        and shape-mismatched key (except those allowed). With False, load what fits and warn.
    allow : glob patterns (official or our key names) of problems to accept; accepted tensors are
        not loaded and keep their initial values. Default: only the unused
        ``global_encoder.fc`` with 12 outputs (SPEC §4). Pass ``()`` to allow nothing.
    device : where to put the model (default CPU).
    allow_pickle : if the file cannot be read with ``weights_only=True`` (official training
        checkpoints pickle config objects), retry with full unpickling -- only for trusted files.

    Returns
    -------
    DualTrack in eval mode, with ``model.load_report`` (:class:`LoadReport`) and
    ``model.checkpoint_metadata``.
    """
    raw, path = _read_source(source, allow_pickle)
    state, stored_config, metadata = _unwrap(raw, path)
    state = _strip_wrappers(state)
    layout = _detect_layout(state, path)
    if preset is not None and not (
        isinstance(preset, str) and stored_config is not None and stored_config.name == preset
    ):
        config = get_config(preset)
    elif stored_config is not None:
        # our checkpoints store their exact sizes: they win over a preset of the same name (a
        # "tiny" trained with other input sizes still loads with preset="tiny")
        config = stored_config
    else:
        try:
            config = get_config(infer_preset(state, layout))
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"cannot infer the preset from the checkpoint ({exc}); pass preset=", path) from None
    default_allow = allow is None
    allow = tuple(DEFAULT_ALLOW if allow is None else allow)

    # shapes come from a skeleton on the meta device: no memory, no wasted random init
    with torch.device("meta"):
        skeleton = DualTrack(config)
    target = skeleton.state_dict()
    report = LoadReport(layout=layout, preset=config.name)
    incoming: dict[str, tuple[str, torch.Tensor]] = {}  # our key -> (source key, tensor)
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            report.unexpected.append(key)
            continue
        if layout == "official":
            hit = official_to_ours(key)
            if hit is None:
                report.unexpected.append(key)
                continue
            ours, conversion = hit
            value = _convert(value, conversion)
        else:
            ours = key
        if ours not in target:
            report.unexpected.append(key)
            continue
        incoming[ours] = (key, value)
    report.missing = [k for k in target if k not in incoming]

    to_load = {}
    for ours, (src, value) in incoming.items():
        if tuple(value.shape) != tuple(target[ours].shape):
            report.mismatched.append((src, tuple(value.shape), ours, tuple(target[ours].shape)))
        else:
            to_load[ours] = value

    def allowed(names, source_shape=None) -> bool:
        if not _is_allowed(names, allow):
            return False
        # the default entry covers only the documented 12-output variant of the unused head
        return not default_allow or (source_shape is not None and len(source_shape) >= 1 and source_shape[0] == 12)

    mismatched, missing, unexpected = [], [], []
    for entry in report.mismatched:
        src, s_shape, ours, _ = entry
        if allowed((src, ours), s_shape):
            report.allowed.append(src)
        else:
            mismatched.append(entry)
    for key in report.missing:
        (report.allowed if allowed((key,)) else missing).append(key)
    for key in report.unexpected:
        (report.allowed if allowed((key,)) else unexpected).append(key)
    report.mismatched, report.missing, report.unexpected = mismatched, missing, unexpected

    if not report.ok and strict:
        raise CheckpointError(
            f"checkpoint does not fit the {config.name} model: {report.summary()}", path or "<state_dict>"
        )
    if not report.ok:
        warnings.warn(f"{path or 'state_dict'}: partial load: {report.summary()}", stacklevel=2)
    if len(to_load) == len(target):
        model = skeleton.to_empty(device="cpu")  # every tensor is overwritten below
    else:
        model = DualTrack(config)  # tensors not loaded keep a proper initialisation
    destination = model.state_dict()
    with torch.no_grad():
        for ours, value in to_load.items():
            destination[ours].copy_(value)
    report.loaded = len(to_load)
    model.eval()
    model.load_report = report
    model.checkpoint_metadata = metadata
    if device is not None:
        model.to(device)
    return model


def save_checkpoint(model: DualTrack, path, **metadata) -> None:
    """Write ``model`` in our checkpoint layout (atomic write).

    Parameters
    ----------
    model : the network.
    path : target ``.pt`` file.
    **metadata : plain Python values (str, numbers, lists, dicts) stored under ``"metadata"``,
        e.g. ``epoch=3, trained_on="sim"``; kept plain so the file loads with
        ``torch.load(weights_only=True)``.
    """
    from freehand3d._atomic import atomic_path

    payload = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "preset": model.config.name,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
