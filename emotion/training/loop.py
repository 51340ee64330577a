"""The framework-free training loop: one epoch of training, validation, optimiser,
precision, and saving/restoring the training state in the project's checkpoint format.

Batches are dicts of numpy arrays (``rows.py``); where they come from (Ray Data shards,
a list in a test) does not matter here. Distributed runs wrap the model in DDP before
calling ``train_epoch``; ``evaluate`` scores rows as ``emotion eval`` does
(``emotion.metrics``) and gathers predictions from every rank through
``torch.distributed`` when a process group is up.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from emotion.checkpoint import load_checkpoint, save_checkpoint
from emotion.evaluation import predict_rows
from emotion.metrics import evaluation_report, score_batches
from emotion.settings import AugmentSettings, LoopSettings
from emotion.training.schedule import LRSchedule

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainState:
    """Where training is: ``epoch`` = next epoch to run, ``step`` = optimiser steps so far."""

    epoch: int = 0
    step: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, row: Mapping[str, Any]) -> bool:
        """Append an epoch's metrics; True when its ``val_score`` is the best so far."""
        self.history.append(dict(row))
        score = row.get("val_score")
        improved = score is not None and not math.isnan(score) and (self.best_score is None or score > self.best_score)
        if improved:
            self.best_score, self.best_epoch = float(score), int(row["epoch"])
        return improved


NOT_VALIDATED: dict[str, Any] = {"score": None, "n": 0, "seconds": 0.0}  # an epoch before validate_from_epoch


def validates(epoch: int, loop: LoopSettings) -> bool:
    """Whether ``epoch`` is scored on the validation sets: from ``validate_from_epoch`` on,
    and always the last epoch, so a run has a best checkpoint. Skipping changes nothing
    that is trained (each epoch's randomness comes from its own seed), only which epochs can
    be chosen as best."""
    return epoch >= loop.validate_from_epoch or epoch == loop.epochs - 1


def score_text(score: float | None) -> str:
    """A val_score as printed: four decimals, or ``-`` for an epoch not validated."""
    return "-" if score is None else f"{score:.4f}"


# -- setup ------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP (or similar) wrapper."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def build_optimizer(model: nn.Module, settings: LoopSettings, family: Any = None) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices/kernels only (not on biases and norms), or
    the groups of ``family.parameter_groups(model, settings)`` where a family has them."""
    if family is not None and hasattr(family, "parameter_groups"):
        groups = family.parameter_groups(model, settings)
    else:
        decay, no_decay = [], []
        for param in model.parameters():
            if param.requires_grad:
                (decay if param.ndim >= 2 else no_decay).append(param)
        groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=settings.lr, betas=settings.betas)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: mixed precision on GPU only (``auto``: bf16 where supported,
    else fp16); ``None`` (fp32) on CPU whatever was asked, since CPU autocast is slower here."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


# -- one epoch --------------------------------------------------------------------------
def _forward_backward(model: nn.Module, criterion: nn.Module, inputs: Mapping[str, torch.Tensor],
                      targets: Mapping[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler | None, amp_dtype: torch.dtype | None, device: torch.device,
                      step: int) -> torch.Tensor:
    """One forward and backward pass (gradients zeroed first, unscaled when fp16); the loss."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        loss = criterion(model(**inputs), targets)["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower the learning rate or check the data")
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    return loss


def train_epoch(model: nn.Module, batches: Iterable[Mapping[str, np.ndarray]], family: Any, criterion: nn.Module,
                optimizer: torch.optim.Optimizer, schedule: LRSchedule, state: TrainState, *, device: torch.device,
                augment_cfg: AugmentSettings, amp_dtype: torch.dtype | None = None,
                scaler: torch.amp.GradScaler | None = None, grad_clip: float | None = None,
                generator: torch.Generator | None = None, log_every: int = 0,
                max_steps: int | None = None, sam_rho: float = 0.0) -> dict[str, float]:
    """Train over ``batches`` once; advances ``state.step``. Returns train_loss (mean per
    image), train_images, train_seconds, train_images_per_s, lr (last). ``sam_rho`` > 0
    wraps the optimiser in SAM (Foret et al. 2021: two forward/backward passes a step)."""
    model.train()
    core = unwrap(model)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    images, steps, factor = 0, 0, 0.0
    started = time.perf_counter()
    for batch in batches:
        inputs, targets = family.collate(batch, core, True, device, augment_cfg, generator)
        factor = schedule.apply(optimizer, state.step)
        run = (model, criterion, inputs, targets, optimizer, scaler, amp_dtype, device, state.step)
        loss = _forward_backward(*run)
        if sam_rho:
            # SAM: the gradient is taken again at the worst nearby point, w + rho g/|g|, then
            # the step is applied from w with that gradient.
            moved = sam_ascend(model, float(sam_rho))
            _forward_backward(*run)
            sam_descend(moved)
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), float(grad_clip))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        n = int(targets["labels"].shape[0])
        loss_sum += loss.detach().double() * n
        images += n
        steps += 1
        state.step += 1
        if log_every and steps % log_every == 0:
            rate = images / max(time.perf_counter() - started, 1e-9)
            log.info("step %d: loss %.4f, %.0f images/s", state.step, loss.item(), rate)
        if max_steps is not None and steps >= max_steps:
            break
    seconds = time.perf_counter() - started
    base_lr = optimizer.param_groups[0].get("base_lr", optimizer.param_groups[0]["lr"])
    return {
        "train_loss": float(loss_sum.item() / max(images, 1)),
        "train_images": images,
        "train_steps": steps,
        "train_seconds": round(seconds, 3),
        "train_images_per_s": round(images / max(seconds, 1e-9), 2),
        "lr": float(base_lr * factor),
    }


@torch.no_grad()
def sam_ascend(model: nn.Module, rho: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move every parameter with a gradient by rho g / |g| (global norm); returns the moves."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return []
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    scale = rho / (norm + 1e-12)
    moved = []
    for p in params:
        step = p.grad * scale
        p.add_(step)
        moved.append((p, step))
    return moved


@torch.no_grad()
def sam_descend(moved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Undo ``sam_ascend`` (the gradients computed at the moved point stay)."""
    for p, step in moved:
        p.sub_(step)


def _gather(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenate each array over every rank, in rank order (identity without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return arrays
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, arrays)
    return {key: np.concatenate([rank_arrays[key] for rank_arrays in everyone]) for key in arrays}


def evaluate(model: nn.Module, batches: Iterable[Mapping[str, np.ndarray]], *, rank: int = 0,
             world_size: int = 1) -> dict[str, Any]:
    """Validation: ``emotion.metrics.evaluation_report`` of ``model`` over row ``batches``,
    plus ``score`` (accuracy, or mAP for a multi-label model: the number the best
    checkpoint is chosen by) and ``seconds``.

    Rows are scored by ``model.predict`` (``emotion.evaluation.predict_rows``) through
    ``metrics.score_batches``, the loop and report ``emotion eval`` uses, in fp32 as there
    whatever the training precision, so validation numbers are ``emotion eval`` numbers.
    With ``world_size`` > 1 every rank reads all batches, scores every ``world_size``-th
    one and the ranks' results are gathered, so every rank returns the same report.
    """
    core = unwrap(model)
    started = time.perf_counter()
    scored = score_batches(lambda batch: predict_rows(core, batch), batches, len(core.labels),
                           rank=rank, world_size=world_size)
    if world_size > 1:
        scored = _gather(scored)
    if len(scored["scores"]) == 0:
        raise ValueError("the validation split has no rows: check data.val_split and the dataset")
    report = evaluation_report(scored["scores"], scored["targets"], tuple(core.labels), bool(core.multi_label),
                               scored["vad_true"], scored["vad_pred"])
    report["score"] = report["mAP"] if core.multi_label else report["accuracy"]
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def combine_val_reports(reports: Mapping[str, Mapping[str, Any]],
                        selected: Sequence[str] | None = None) -> dict[str, Any]:
    """One validation report from one per validation dataset (``val``, or ``val_<source>``
    of a mixture of datasets): a single report as it is; several give ``score`` and
    ``accuracy`` (or ``mAP``) as the mean over the ``selected`` datasets (all when None),
    so each counts the same whatever its size, ``n`` and ``seconds`` summed over all, and
    ``sources`` {name: report} for every dataset, selected or held out."""
    if len(reports) == 1:
        return dict(next(iter(reports.values())))
    named = {key.removeprefix("val_"): dict(report) for key, report in reports.items()}
    chosen = [named[key.removeprefix("val_")] for key in reports if selected is None or key in selected]
    if not chosen:
        raise ValueError(f"no selected validation dataset among {sorted(reports)}")
    out: dict[str, Any] = {"score": float(np.mean([r["score"] for r in chosen])),
                           "n": int(sum(r["n"] for r in named.values())),
                           "seconds": round(sum(r["seconds"] for r in named.values()), 3), "sources": named}
    for key in ("accuracy", "mAP"):
        if all(key in r for r in chosen):
            out[key] = float(np.mean([r[key] for r in chosen]))
    return out


# -- checkpoints ------------------------------------------------------------------------
def save_training_checkpoint(path: str, *, model_name: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                             state: TrainState, train_cfg: Mapping[str, Any], metrics: Mapping[str, Any],
                             scaler: torch.amp.GradScaler | None = None, include_optimizer: bool = True) -> str:
    """Write the full training state (model, optimiser, epoch, config, labels, metrics,
    history) as an ``emotion.checkpoint`` file. ``state.epoch`` is the next epoch to run;
    the file's ``epoch`` is the last finished one."""
    core = unwrap(model)
    extra = {
        "step": state.step,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "train_cfg": train_cfg,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
    }
    return save_checkpoint(path, model_name=model_name, model_cfg=core.config, state_dict=core.state_dict(),
                           labels=list(core.labels), epoch=state.epoch - 1,
                           optimizer_state=optimizer.state_dict() if include_optimizer else None,
                           metrics=metrics, extra=extra)


def restore_training_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                                scaler: torch.amp.GradScaler | None = None,
                                check_labels: bool = True) -> TrainState:
    """Load weights (strictly), optimiser and scaler state from a checkpoint file; returns
    the state to continue from (next epoch = saved epoch + 1)."""
    ckpt = load_checkpoint(path)
    _load_model_state(ckpt, model, f"checkpoint {path}", check_labels)
    extra = ckpt.get("extra") or {}
    if optimizer is not None:
        if ckpt.get("optimizer_state") is not None:
            optimizer.load_state_dict(ckpt["optimizer_state"])
        else:
            log.warning("checkpoint %s has no optimiser state: the optimiser starts fresh", path)
    if scaler is not None and extra.get("grad_scaler"):
        scaler.load_state_dict(extra["grad_scaler"])
    epoch = ckpt.get("epoch")
    return TrainState(
        epoch=0 if epoch is None else int(epoch) + 1,
        step=int(extra.get("step", 0)),
        best_score=extra.get("best_score"),
        best_epoch=extra.get("best_epoch"),
        history=list(extra.get("history") or []),
    )


def load_initial_weights(path: str, model: nn.Module) -> None:
    """Fine-tuning: ``model``'s weights (strictly, same labels) from the checkpoint at
    ``path`` (a file, ``s3://`` URI or shipped weight name), nothing else of its state."""
    ckpt = load_checkpoint(path)
    _load_model_state(ckpt, model, f"init_weights {path}", check_labels=True)
    log.info("initial weights from %s (sha256 %s)", path, ckpt["sha256"][:12])


def _load_model_state(ckpt: Mapping[str, Any], model: nn.Module, source: str, check_labels: bool) -> None:
    """``ckpt``'s weights into ``model`` (strictly); with ``check_labels``, a checkpoint of
    other labels is an error naming its ``source``."""
    core = unwrap(model)
    if check_labels and list(ckpt["labels"]) != list(core.labels):
        raise ValueError(f"{source} has labels {ckpt['labels']}, the model being trained has {list(core.labels)}")
    core.load_state_dict(ckpt["state_dict"], strict=True)


def epoch_generator(seed: int, epoch: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one epoch's augmentation on ``device``: the same after a resume."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + epoch * 1009 + rank)

