"""Training DualTrack: the three stages (local encoder, global encoder, fusion) and fine-tuning.

Stages
------
``local``
    The local encoder alone (3-D CNN, spatial pooling, temporal transformer) learns the motion of
    each frame relative to the previous one through its own 6-DoF head (``local_encoder.pose_head``,
    the upstream ``temporal_encoder.fc``). BatchNorm learns batch statistics.
``global``
    The global encoder alone learns the motion between consecutive *sampled* frames (every
    ``global_stride``-th frame) through its own head (``global_encoder.pose_head``, upstream
    ``global_encoder.fc``). It sees only the sampled frames, so its windows are long and cheap.
``fusion``
    Both encoders are frozen (no gradients, BatchNorm on running statistics); the fusion decoder
    and the final head learn the per-frame motion from the two feature streams.
``finetune``
    Everything that the full model uses trains end to end (from ``init``, usually the output of
    the fusion stage or an official checkpoint; from random weights when no ``init`` is given).

Loss: the mean squared error of the 6-DoF relative pose parameters ``[tx, ty, tz, rx, ry, rz]``
(mm and degrees, the head's own units; SPEC section 9) over every frame pair of every window.

Optimisation: AdamW with a linear warm-up and a cosine decay (per optimiser step) to
``min_lr_ratio * lr``; gradient-norm clipping; automatic mixed precision (fp16 autocast with a
gradient scaler) on CUDA only.

Distribution: launch with ``torchrun --nproc_per_node K`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); :func:`train` then joins the process group
(NCCL on CUDA, gloo on CPU), wraps the model in ``DistributedDataParallel`` and shards every
epoch with ``DistributedSampler``. ``batch_size`` is the *global* batch: each of the K processes
takes ``batch_size / K`` windows, DDP averages the gradients, so K processes follow the same
trajectory as one process (exactly so when BatchNorm does not use batch statistics, i.e. in the
``fusion`` stage or with ``batchnorm="frozen"``; on CUDA trainable BatchNorms become
``SyncBatchNorm``).

Outputs in ``out_dir``: ``last.pt`` (model + optimiser/scheduler/scaler/epoch state, for
``resume``), ``best.pt`` (weights of the epoch with the lowest validation loss; the training loss
when the CSV has no ``val`` split) and ``history.json`` (per-epoch losses). Both ``.pt`` files use
:func:`freehand3d.tracking.checkpoint.save_checkpoint`'s layout and load with
:func:`freehand3d.tracking.load_dualtrack`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from freehand3d.errors import CheckpointError, ConfigError

STAGES = ("local", "global", "fusion", "finetune")

#: learning rates used when ``TrainOptions.lr`` is None
DEFAULT_LR = {"local": 3e-4, "global": 3e-4, "fusion": 3e-4, "finetune": 1e-4}

__all__ = ["STAGES", "TrainOptions", "TrainResult", "train", "stage_parameters", "cosine_schedule"]


@dataclass
class TrainOptions:
    """Every setting of a training run (stored in the checkpoints).

    Attributes
    ----------
    stage : one of :data:`STAGES`.
    preset : model preset name (``tiny``, ``dualtrack-2024``, ...) for a fresh model; ignored when
        ``init`` gives a checkpoint (its own architecture is used).
    init : checkpoint to start from (our format or an official one), e.g. the previous stage.
    epochs : passes over the training windows.
    batch_size : global batch (windows per optimiser step, summed over processes).
    window : frames per training window (``local``, ``fusion``, ``finetune``).
    global_window : frames per window in the ``global`` stage (only every ``global_stride``-th
        frame is read); None = the shortest training sweep.
    window_stride : frames between window starts (None = window // 2).
    lr : peak learning rate (None = :data:`DEFAULT_LR` of the stage).
    min_lr_ratio : final learning rate of the cosine decay, as a fraction of ``lr``.
    warmup_steps : linear warm-up steps.
    weight_decay : AdamW decoupled weight decay.
    grad_clip : maximum global gradient norm (0 = no clipping).
    amp : fp16 autocast + gradient scaling on CUDA (ignored on CPU).
    batchnorm : ``"auto"`` (trainable BatchNorms use batch statistics, frozen ones the running
        statistics) or ``"frozen"`` (every BatchNorm uses its running statistics).
    max_steps_per_epoch : cap on optimiser steps per epoch (None = all windows).
    seed : seeds the initial weights, the window order and every other random choice.
    device : ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None = CUDA when available. Under torchrun on
        CUDA each process uses ``cuda:LOCAL_RANK``.
    num_workers : DataLoader worker processes.
    """

    stage: str = "fusion"
    preset: str = "tiny"
    init: str | None = None
    epochs: int = 10
    batch_size: int = 2
    window: int = 32
    global_window: int | None = None
    window_stride: int | None = None
    lr: float | None = None
    min_lr_ratio: float = 0.05
    warmup_steps: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    amp: bool = True
    batchnorm: str = "auto"
    max_steps_per_epoch: int | None = None
    seed: int = 0
    device: str | None = None
    num_workers: int = 0

    def check(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"unknown training stage {self.stage!r}; choose one of {', '.join(STAGES)}", "stage")
        if self.epochs < 1 or self.batch_size < 1 or self.window < 2:
            raise ConfigError("epochs and batch_size must be >= 1 and window >= 2", "training options")
        if self.batchnorm not in ("auto", "frozen"):
            raise ConfigError(f"batchnorm must be 'auto' or 'frozen', got {self.batchnorm!r}", "batchnorm")


@dataclass
class TrainResult:
    """What :func:`train` returns: the checkpoint paths and the per-epoch history."""

    out_dir: Path
    best: Path
    last: Path
    history: list[dict]
    best_epoch: int
    best_loss: float


# ----------------------------------------------------------------------------- stage definitions


def stage_parameters(model, stage: str) -> tuple[list, list]:
    """(trainable modules, frozen modules) of ``model`` for ``stage``.

    Heads that a stage does not use are frozen too, so that every trainable parameter receives a
    gradient (DistributedDataParallel requires it).
    """
    le, ge = model.local_encoder, model.global_encoder
    if stage == "local":
        train = [le.cnn, le.pool, le.temporal, le.pose_head]
    elif stage == "global":
        train = [ge]
    elif stage == "fusion":
        train = [model.fusion, model.head]
    elif stage == "finetune":
        train = [le.cnn, le.pool, le.temporal, le.proj, ge.cnn, ge.proj, ge.frame_position, ge.layers, model.fusion, model.head]
    else:
        raise ConfigError(f"unknown training stage {stage!r}; choose one of {', '.join(STAGES)}", "stage")
    trainable_ids = {id(p) for m in train for p in m.parameters()}
    frozen = [m for m in model.modules() if not any(True for _ in m.children())]  # leaves
    frozen = [m for m in frozen if not any(id(p) in trainable_ids for p in m.parameters(recurse=False))]
    return train, frozen


def _stage_module_class():
    import torch
    from torch import nn

    class StageModel(nn.Module):
        """What one stage optimises, as a single module so DDP sees one forward per step.

        ``forward(local, global_)`` returns the predictions that match the batch targets:
        (B, window-1, 6) for every stage except ``global`` ((B, M-1, 6)).
        """

        def __init__(self, model, stage: str):
            super().__init__()
            self.model = model
            self.stage = stage

        def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
            model = self.model
            if self.stage == "global":
                m = global_.shape[1]
                indices = torch.arange(m, device=global_.device) * model.config.global_stride
                feats = model.global_encoder(global_, indices)
                return model.global_encoder.pose_head(feats)[:, 1:]
            if self.stage == "local":
                le = model.local_encoder
                tokens = le.frame_tokens(lambda lo, hi: local[:, lo:hi], local.shape[1])
                return le.pose_head(le.temporal(tokens))[:, 1:]
            if self.stage == "fusion":
                with torch.no_grad():  # frozen encoders: no activations kept for backward
                    n = local.shape[1]
                    lf = model.local_encoder(local)
                    gf = model.global_encoder(global_, model.global_indices(n, device=local.device))
                return model.decode(lf, gf)["head_output"]
            return model(local, global_)["head_output"]

    return StageModel


def cosine_schedule(total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.05):
    """Learning-rate factor per optimiser step: linear warm-up to 1, then cosine decay to
    ``min_lr_ratio`` at ``total_steps`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = max(int(warmup_steps), 0)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------- distribution


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    if dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, False)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return _Dist(rank, world, local_rank, True)


def _all_reduce_sum(values, dist_info: _Dist, device):
    import torch

    if dist_info.world == 1:
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------- helpers


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _resolve_device(requested: str | None, dist_info: _Dist):
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("CUDA was requested but is not available", "device")
        if dist_info.world > 1:
            device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    return device


def _build_model(options: TrainOptions):
    import torch

    from freehand3d.tracking.checkpoint import load_dualtrack
    from freehand3d.tracking.model import DualTrack, get_config

    if options.init:
        model = load_dualtrack(options.init, strict=True)
    else:
        torch.manual_seed(options.seed)
        try:
            model = DualTrack(get_config(options.preset) if isinstance(options.preset, str) else options.preset)
        except ValueError as exc:
            raise ConfigError(str(exc), "preset") from None
    return model


def _set_modes(model, frozen_leaves, batchnorm: str) -> None:
    from torch import nn

    model.train()
    for module in frozen_leaves:
        module.eval()
    if batchnorm == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _collate(items):
    import torch

    return {
        "local": torch.stack([it["local"] for it in items]),
        "global": torch.stack([it["global"] for it in items]),
        "target": torch.stack([it["target"] for it in items]),
        "target_global": torch.stack([it["target_global"] for it in items]),
    }


def _training_state(optimizer, scheduler, scaler, epoch, best, history, options) -> dict:
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "best_loss": best[0],
        "best_epoch": best[1],
        "history": history,
        "options": asdict(options),
    }


# ----------------------------------------------------------------------------- main entry


def train(
    csv_path,
    out_dir,
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_after_epochs: int | None = None,
    **overrides,
) -> TrainResult:
    """Train (one stage of) DualTrack on the sweeps listed in ``csv_path``.

    Parameters
    ----------
    csv_path : CSV with columns ``sweep_id, path, split`` (see :mod:`freehand3d.tracking.data`).
    out_dir : folder for ``best.pt``, ``last.pt`` and ``history.json``.
    options : :class:`TrainOptions`; keyword ``overrides`` replace single fields
        (``train(csv, out, stage="local", epochs=3)``).
    resume : continue from ``out_dir/last.pt`` (weights, optimiser, scheduler, scaler, epoch and
        best-so-far); the options stored there are used, except ``epochs`` (so a finished run can
        be extended), ``device`` and ``num_workers``.
    progress : show a rich progress bar (main process only).
    stop_after_epochs : end the run (with ``last.pt`` saved) once this many epochs are done, without
        changing the schedule, which still spans ``options.epochs``; for time-sliced jobs that
        continue with ``resume=True``.

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        bad CSV or sweep files; ConfigError for invalid options; CheckpointError when ``resume``
        finds no usable ``last.pt``.
    """
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from freehand3d.tracking.checkpoint import load_dualtrack, save_checkpoint
    from freehand3d.tracking.data import WindowDataset, read_sweep_csv

    options = replace(options or TrainOptions(), **overrides)
    out_dir = Path(out_dir)
    last_path, best_path, history_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "history.json"
    saved_state = None
    if resume:
        if not last_path.is_file():
            raise CheckpointError("cannot resume: no last.pt in the output folder", out_dir)
        raw = torch.load(last_path, map_location="cpu", weights_only=True)
        saved_state = (raw.get("metadata") or {}).get("training")
        if not saved_state:
            raise CheckpointError("cannot resume: last.pt holds no training state", last_path)
        stored = {f.name: saved_state["options"][f.name] for f in fields(TrainOptions) if f.name in saved_state["options"]}
        keep = {"epochs": options.epochs, "device": options.device, "num_workers": options.num_workers}
        options = replace(TrainOptions(**stored), **keep)
    options.check()

    device_kind = "cuda" if (options.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "cpu"
    dist_info = _init_distributed(device_kind)
    try:
        device = _resolve_device(options.device, dist_info)
        _seed_everything(options.seed)
        if options.batch_size % dist_info.world:
            raise ConfigError(
                f"batch_size {options.batch_size} is not divisible by the {dist_info.world} processes", "batch_size"
            )
        per_rank_batch = options.batch_size // dist_info.world

        model = load_dualtrack(last_path, strict=True) if saved_state else _build_model(options)
        cfg = model.config
        stage = options.stage

        # ---- data
        entries = read_sweep_csv(csv_path)
        train_entries = [e for e in entries if e.split == "train"]
        val_entries = [e for e in entries if e.split == "val"]
        if not train_entries:
            raise ConfigError("the CSV has no sweep with split 'train'", os.fspath(csv_path))
        window = options.window
        if stage == "global":
            window = options.global_window or _shortest_sweep(train_entries)
            if window < 2 * cfg.global_stride + 1:
                raise ConfigError(
                    f"the global stage needs windows of at least {2 * cfg.global_stride + 1} frames "
                    f"(two sampled frame pairs); got {window}",
                    "global_window",
                )
        stride = options.window_stride or max(1, window // 2)
        need_local = stage != "global"
        train_set = WindowDataset(train_entries, window, stride, cfg, need_local=need_local)
        val_set = WindowDataset(val_entries, window, stride, cfg, need_local=need_local) if val_entries else None
        if len(train_set) < options.batch_size:
            raise ConfigError(
                f"only {len(train_set)} training windows of {window} frames for a batch of {options.batch_size}; "
                "use shorter windows, a smaller batch or more sweeps",
                os.fspath(csv_path),
            )
        # one sampler for every world size: with K processes rank r takes positions r, r+K, ...
        # of the same shuffled order, so the union of a step's K local batches is the
        # single-process batch of that step
        sampler = DistributedSampler(
            train_set, num_replicas=dist_info.world, rank=dist_info.rank, shuffle=True, seed=options.seed, drop_last=True
        )
        loader = DataLoader(
            train_set,
            batch_size=per_rank_batch,
            sampler=sampler,
            drop_last=True,
            collate_fn=_collate,
            num_workers=options.num_workers,
        )
        steps_per_epoch = len(loader)
        if options.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, options.max_steps_per_epoch)

        # ---- model, optimiser
        model.to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        trainable, frozen_leaves = stage_parameters(model, stage)
        params = []
        for module in trainable:
            for p in module.parameters():
                p.requires_grad_(True)
                params.append(p)
        stage_model = _stage_module_class()(model, stage)
        if dist_info.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            if device.type == "cuda" and options.batchnorm == "auto" and stage != "fusion":
                stage_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(stage_model)
            ddp = DistributedDataParallel(stage_model, device_ids=[device.index] if device.type == "cuda" else None)
        else:
            ddp = stage_model
        lr = options.lr if options.lr is not None else DEFAULT_LR[stage]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, cosine_schedule(options.epochs * steps_per_epoch, options.warmup_steps, options.min_lr_ratio)
        )
        use_amp = bool(options.amp and device.type == "cuda")
        scaler = torch.amp.GradScaler("cuda") if use_amp else None

        history: list[dict] = []
        best = (math.inf, -1)
        start_epoch = 0
        if saved_state:
            optimizer.load_state_dict(saved_state["optimizer"])
            scheduler.load_state_dict(saved_state["scheduler"])
            # the cosine horizon follows the (possibly extended) epoch count
            scheduler.lr_lambdas[0] = cosine_schedule(
                options.epochs * steps_per_epoch, options.warmup_steps, options.min_lr_ratio
            )
            if scaler is not None and saved_state.get("scaler"):
                scaler.load_state_dict(saved_state["scaler"])
            start_epoch = int(saved_state["epoch"]) + 1
            best = (float(saved_state["best_loss"]), int(saved_state["best_epoch"]))
            history = list(saved_state["history"])

        target_key = "target_global" if stage == "global" else "target"
        bar = _progress(progress and dist_info.main)
        with bar:
            end_epoch = options.epochs if stop_after_epochs is None else min(options.epochs, int(stop_after_epochs))
            task = bar.add_task(f"train {stage}", total=max(0, end_epoch - start_epoch) * steps_per_epoch)
            for epoch in range(start_epoch, end_epoch):
                sampler.set_epoch(epoch)
                _set_modes(model, frozen_leaves, options.batchnorm)
                loss_sum, count = 0.0, 0
                for step, batch in enumerate(loader):
                    if step >= steps_per_epoch:
                        break
                    local = batch["local"].to(device, non_blocking=True)
                    glob = batch["global"].to(device, non_blocking=True)
                    target = batch[target_key].to(device, non_blocking=True)
                    autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
                    with autocast:
                        pred = ddp(local, glob)
                    loss = torch.nn.functional.mse_loss(pred.float(), target)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if options.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    step_loss = float(loss.detach())
                    loss_sum += step_loss * len(target)
                    count += len(target)
                    bar.update(task, advance=1, description=f"train {stage} epoch {epoch + 1}/{options.epochs} loss {step_loss:.4g}")
                loss_sum, count = _all_reduce_sum([loss_sum, count], dist_info, device)
                train_loss = loss_sum / max(count, 1)
                val_loss = _evaluate(stage_model, val_set, per_rank_batch, target_key, device, use_amp, dist_info) if val_set else None
                record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "lr": scheduler.get_last_lr()[0]}
                history.append(record)
                score = val_loss if val_loss is not None else train_loss
                improved = score < best[0]
                if improved:
                    best = (score, epoch)
                if dist_info.main:
                    meta = {"stage": stage, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss}
                    if improved:
                        save_checkpoint(model, best_path, **meta)
                    state = _training_state(optimizer, scheduler, scaler, epoch, best, history, options)
                    save_checkpoint(model, last_path, **meta, training=state)
                    from freehand3d._atomic import write_text_atomic

                    write_text_atomic(history_path, json.dumps(history, indent=1))
                if dist_info.world > 1:
                    import torch.distributed as dist

                    dist.barrier()
        return TrainResult(out_dir, best_path, last_path, history, best[1], best[0])
    finally:
        if dist_info.initialised_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _evaluate(stage_model, dataset, batch_size, target_key, device, use_amp, dist_info) -> float:
    """Mean validation loss; windows are split across processes without padding (index r, r+K...)
    and the sums combined, so the value does not depend on the number of processes."""
    import torch

    model = stage_model.model
    was_training = model.training
    model.eval()
    mine = list(range(dist_info.rank, len(dataset), dist_info.world))
    loss_sum, count = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(mine), batch_size):
            batch = _collate([dataset[i] for i in mine[lo : lo + batch_size]])
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                pred = stage_model(batch["local"].to(device), batch["global"].to(device))
            target = batch[target_key].to(device)
            per_window = ((pred.float() - target) ** 2).mean(dim=(1, 2))
            loss_sum += float(per_window.sum())
            count += len(per_window)
    model.train(was_training)
    loss_sum, count = _all_reduce_sum([loss_sum, count], dist_info, device)
    return loss_sum / max(count, 1)


def _shortest_sweep(entries) -> int:
    import h5py

    lengths = []
    for e in entries:
        with h5py.File(e.path, "r") as fh:
            lengths.append(fh["images"].shape[0])
    return min(lengths)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
    )
