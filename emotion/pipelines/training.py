"""Ray Train glue: datasets as Ray Data, a ``TorchTrainer`` (DDP) over them, checkpoints
to a local path or ``s3://``, resume, and the export of the best checkpoint.

What runs where:

* driver (``run_training``): reads the dataset (any ``emotion.data`` format, or prepared
  Parquet shards), turns samples into per-person crop rows with Ray Data tasks, and
  materialises them (decoding happens once, not once per epoch); starts the trainer;
  after it, exports the best checkpoint (chosen on the validation split) to
  ``<output>/best.ckpt`` and writes ``metrics.csv`` / ``metrics.json`` / ``summary.json``.
* workers (``train_loop_per_worker``): the framework-free loop of ``emotion.training``,
  fed from ``ray.train.get_dataset_shard``; three Ray calls matter: ``get_checkpoint``
  (resume), ``get_dataset_shard`` (data), ``report`` (metrics + checkpoint).

Resume: a run is ``<storage_path>/<run_name>``. Ray Train restores the latest checkpoint
of a run that already exists there, after a worker crash (``FailureConfig``) or when the
job is started again with ``resume=true``. ``resume_from=PATH`` starts a new run from a
checkpoint (a ``.ckpt`` file or a Ray checkpoint folder holding one).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa
import ray
import ray.train
import ray.train.torch
import torch

from emotion import storage
from emotion.allocator import retain_freed_memory
from emotion.checkpoint import load_checkpoint, save_checkpoint
from emotion.pipelines.ray_env import QUIET_TRAIN_POLLING_HOOK, forwarded_env, gpus_available, init_ray
from emotion.weights import KNOWN_WEIGHTS
from emotion.training import history as history_io
from emotion.training.distillation import Distilled, check_teacher
from emotion.training.families import get_family
from emotion.training.loop import (NOT_VALIDATED, TrainState, amp_dtype_for, build_optimizer,
                                   combine_val_reports, epoch_generator, evaluate, load_initial_weights,
                                   restore_training_checkpoint, save_training_checkpoint, score_text,
                                   seed_everything, train_epoch, validates)
from emotion.models.loading import input_spec, load_model_from_checkpoint
from emotion.models.settings import network_config
from emotion.settings import (DataSettings, ModelSettings, ScalingSettings, SourceData, SourcesData,
                              TrainSettings, reader_options)
from emotion.training.rows import CropSpec, RowCounts, person_rows
from emotion.training.schedule import build_schedule

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.ckpt"
BEST_FILE = "best.ckpt"
LAST_FILE = "last.ckpt"  # the final epoch's model: the best by val_score is not always the one to use
SUMMARY_FILE = "summary.json"
SCORE_METRIC = "val_score"


# -- datasets ---------------------------------------------------------------------------
def _filesystem(uri: str) -> tuple[Any, str]:
    """``storage.get_filesystem`` for Ray tasks and actors, which need not share this
    process's environment: S3 keys found in the environment travel inside the
    filesystem object; without keys here the standard chain (profile, role) applies there."""
    keys = {"access_key_id": os.environ.get("AWS_ACCESS_KEY_ID"),
            "secret_access_key": os.environ.get("AWS_SECRET_ACCESS_KEY"),
            "session_token": os.environ.get("AWS_SESSION_TOKEN")}
    s3 = storage.S3Config(**keys) if storage.is_s3(uri) and keys["access_key_id"] and keys["secret_access_key"] else None
    return storage.get_filesystem(uri, s3)


def _label_info(data: DataSettings) -> tuple[str, tuple[str, ...], list[dict[str, Any]] | None]:
    """(label set, labels, samples; None for prepared data, which Ray Data reads itself)."""
    fmt, root = data.format, data.root
    if isinstance(data, SourcesData):  # samples are read source by source (_mixture_datasets)
        from emotion.labels import get_label_set

        return data.label_set, tuple(get_label_set(data.label_set)), []
    if fmt == "prepared":
        import pyarrow.parquet as pq

        from emotion.data.prepare import list_shards, prepared_labels

        shards = list_shards(root)
        if not shards:
            raise FileNotFoundError(f"no prepared Parquet shards under {root!r} (run `emotion data prepare` first)")
        filesystem, path = storage.get_filesystem(shards[0])
        label_set, labels = prepared_labels(pq.read_schema(path, filesystem=filesystem).empty_table())
        return label_set, labels, None
    from emotion.data import read_dataset

    splits = [s for s in (data.train_split, data.val_split) if s]
    sample_set = read_dataset(fmt, root, **{"splits": splits, **reader_options(data)})
    samples = list(sample_set.samples())
    return sample_set.label_set, tuple(sample_set.labels), samples


def _rows_batch(batch: pa.Table, spec: CropSpec, num_labels: int, multi_label: bool,
                make_rows: Callable[..., dict[str, np.ndarray]] = person_rows) -> dict[str, np.ndarray]:
    from emotion.data.records import row_to_sample

    retain_freed_memory()  # once per worker process: decoded images reuse freed memory
    samples = [row_to_sample(row, num_labels) for row in batch.to_pylist()]
    return make_rows(samples, spec, RowCounts(), num_labels=num_labels, multi_label=multi_label)


def _split_dataset(root: str, samples: list[dict[str, Any]] | None, labels: tuple[str, ...],
                   label_set: str, split: str, spec: CropSpec, multi_label: bool, seed: int, limit: int | None,
                   rows_per_task: int, make_rows: Callable[..., dict[str, np.ndarray]] = person_rows
                   ) -> ray.data.Dataset:
    """One split as a Ray Dataset of training rows, shuffled once, materialised."""
    if samples is None:  # prepared Parquet shards: `<split>-NNNNN.parquet`
        from emotion.data.prepare import list_shards

        shards = [s for s in list_shards(root) if os.path.basename(s).startswith(f"{split}-")]
        if not shards:
            raise FileNotFoundError(f"no shards of split {split!r} under {root!r}")
        filesystem, _ = _filesystem(shards[0])
        ds = ray.data.read_parquet([storage.get_filesystem(s)[1] for s in shards], filesystem=filesystem)
        if limit:
            ds = ds.limit(int(limit))
        ds = ds.random_shuffle(seed=seed)
        return _rows_dataset(ds, split, spec, labels, multi_label, rows_per_task, make_rows)
    chosen = [s for s in samples if s["split"] == split]
    if not chosen:
        raise ValueError(f"split {split!r} of {root!r} has no images "
                         f"(splits found: {sorted({s['split'] for s in samples})})")
    return _samples_dataset(chosen, labels, label_set, split, spec, multi_label, seed, limit, rows_per_task,
                            make_rows)


def _samples_dataset(chosen: list[dict[str, Any]], labels: tuple[str, ...], label_set: str, split: str,
                     spec: CropSpec, multi_label: bool, seed: int, limit: int | None, rows_per_task: int,
                     make_rows: Callable[..., dict[str, np.ndarray]] = person_rows) -> ray.data.Dataset:
    """Samples (shuffled once by ``seed``, at most ``limit``) as a materialised Ray
    Dataset of training rows."""
    from emotion.data.records import samples_to_table

    order = np.random.default_rng(seed).permutation(len(chosen))
    chosen = [chosen[i] for i in order][: int(limit) if limit else None]
    table = samples_to_table(chosen, labels, label_set)
    chunks = [table.slice(i, rows_per_task) for i in range(0, table.num_rows, rows_per_task)]
    return _rows_dataset(ray.data.from_arrow(chunks), split, spec, labels, multi_label, rows_per_task, make_rows)


def _rows_dataset(ds: ray.data.Dataset, split: str, spec: CropSpec, labels: tuple[str, ...], multi_label: bool,
                  rows_per_task: int, make_rows: Callable[..., dict[str, np.ndarray]]) -> ray.data.Dataset:
    ds = ds.map_batches(_rows_batch, fn_kwargs={"spec": spec, "num_labels": len(labels),
                                                "multi_label": multi_label, "make_rows": make_rows},
                        batch_format="pyarrow", batch_size=rows_per_task)
    ds.context.execution_options.preserve_order = True  # blocks in sample order, whichever task ends first
    ds = ds.materialize()
    if ds.count() == 0:
        raise ValueError(f"split {split!r} gave no training rows (no labelled person with the boxes the model needs)")
    return ds


def build_datasets(settings: TrainSettings, spec: CropSpec, samples: list[dict[str, Any]] | None,
                   labels: tuple[str, ...], label_set: str, multi_label: bool,
                   make_rows: Callable[..., dict[str, np.ndarray]] = person_rows) -> dict[str, ray.data.Dataset]:
    """``{"train": ..., "val": ...}`` Ray Datasets of training rows (test is never used
    here): one per person with its crops, or what the family's ``make_rows`` makes. A
    mixture of datasets (``data.sources``) gives one ``val_<source>`` per scored source
    instead of ``val``."""
    data = settings.data
    seed, limit, rows_per_task = settings.seed, settings.limit, settings.train.rows_per_task
    if isinstance(data, SourcesData):
        return _mixture_datasets(data.sources, spec, labels, label_set, multi_label, seed, limit, rows_per_task,
                                 make_rows)
    out = {}
    for key in ("train", "val"):
        split = getattr(data, f"{key}_split")
        if not split:
            raise ValueError(f"data.{key}_split is not set: training needs a train split and a validation split")
        out[key] = _split_dataset(data.root, samples, labels, label_set, str(split), spec, multi_label, seed,
                                  limit, rows_per_task, make_rows)
    return out


# -- several datasets in one label space (emotion.data.mixture) -----------------------------
def _mixture_datasets(sources: Mapping[str, SourceData], spec: CropSpec, labels: tuple[str, ...], label_set: str,
                      multi_label: bool, seed: int, limit: int | None, rows_per_task: int,
                      make_rows: Callable[..., dict[str, np.ndarray]]) -> dict[str, ray.data.Dataset]:
    """The mixture's one train dataset (every trained source at its weight, shuffled
    together) and a ``val_<source>`` dataset per scored source."""
    from emotion.data.mixture import repeat_plan, source_samples

    train: list[dict[str, Any]] = []
    out: dict[str, ray.data.Dataset] = {}
    for number, (name, source) in enumerate(sources.items()):
        by_split = source_samples(name, source, labels)
        if "train" in by_split:
            rows = by_split["train"]
            rows = rows[: int(limit)] if limit else rows
            train += [rows[i] for i in repeat_plan(len(rows), source.weight, seed + number)]
            log.info("source %s: %d train images x %.2f", name, len(rows), source.weight)
        if "val" in by_split:
            what = (f"{name}/{source.train_split} fold {source.folds.held_out} of {source.folds.count}"
                    if source.folds else f"{name}/{source.val_split}")
            out[f"val_{name}"] = _samples_dataset(by_split["val"], labels, label_set, what, spec,
                                                  multi_label, seed, limit, rows_per_task, make_rows)
    out["train"] = _samples_dataset(train, labels, label_set, "train", spec, multi_label, seed, None,
                                    rows_per_task, make_rows)
    return out


def val_keys(datasets: Mapping[str, Any]) -> list[str]:
    """The validation datasets' keys: ``val``, or ``val_<source>`` of a mixture."""
    return sorted(k for k in datasets if k == "val" or k.startswith("val_"))


def selected_val_keys(data: Any, datasets: Mapping[str, Any]) -> list[str]:
    """The validation datasets ``val_score`` is the mean over: every one, except a
    mixture's sources with ``select: false`` (scored and reported, never chosen by)."""
    if data.format != "sources":
        return val_keys(datasets)
    return [key for key in val_keys(datasets) if data.sources[key.removeprefix("val_")].select]


def class_prior(dataset: ray.data.Dataset, num_labels: int) -> list[float]:
    """Share of each class in the training rows (label rows summed: soft targets count
    fractionally)."""
    totals = np.zeros(num_labels, dtype=np.float64)
    for batch in dataset.select_columns(["labels"]).iter_batches(batch_size=8192, batch_format="numpy"):
        totals += np.nansum(np.asarray(batch["labels"], dtype=np.float64).reshape(-1, num_labels), axis=0)
    return (totals / max(totals.sum(), 1e-12)).round(6).tolist()


# -- the worker loop --------------------------------------------------------------------
def _resume_file(path: str) -> str:
    """A ``.ckpt`` file, or the checkpoint file inside a Ray checkpoint folder."""
    inside = storage.join(path, CHECKPOINT_FILE)
    return inside if not path.endswith(".ckpt") and storage.exists(inside) else path


def _gather_placement() -> tuple[list[str], list[int]]:
    """(node id, pid) of every rank, in rank order."""
    import torch.distributed as dist

    mine = (ray.get_runtime_context().get_node_id(), os.getpid())
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        everyone: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    return [n for n, _ in everyone], [p for _, p in everyone]


def _epoch_row(epoch: int, train: Mapping[str, Any], val: Mapping[str, Any], world_size: int, start_epoch: int,
               nodes: list[str], pids: list[int], seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, **train, SCORE_METRIC: val["score"]}
    for key in ("accuracy", "mAP", "ap50"):  # ap50: subject-box detection (single-stage models)
        if key in val:
            row[f"val_{key}"] = val[key]
    if "vad_mae" in val:
        row["val_vad_mae"] = float(np.mean(val["vad_mae"]))
    row.update({"val_n": val["n"], "val_seconds": val["seconds"], "epoch_seconds": round(seconds, 3),
                "world_size": world_size, "start_epoch": start_epoch, "node_ids": nodes, "pids": pids})
    if "per_class" in val:
        row["val_per_class"] = val["per_class"]
    for name, report in (val.get("sources") or {}).items():
        for key in ("accuracy", "mean_recall", "ece", "mAP"):
            if key in report:
                row[f"val_{name}_{key}"] = report[key]
    return row


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker (see the module doc). ``config``: the job's settings
    as a plain dict (``settings``), validated again here, and what the driver measured."""
    retain_freed_memory()  # every step's tensors reuse the last step's memory (emotion/allocator.py)
    settings = TrainSettings.model_validate(config["settings"])
    loop = settings.train
    if not logging.getLogger().handlers:  # Ray workers have none: progress lines would be lost
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if loop.torch_threads:
        torch.set_num_threads(loop.torch_threads)
    seed_everything(settings.seed + rank)
    device = ray.train.torch.get_device()
    family = get_family(config["model_name"])
    if loop.distill.teacher:  # the student also learns the teacher's scores on the same crops
        family = Distilled(family, load_model_from_checkpoint(loop.distill.teacher, device=device), loop.distill)
    model = family.build_model(config["model_cfg"]).to(device)
    criterion = family.build_criterion(loop, model, config["class_prior"])
    optimizer = build_optimizer(model, loop, family)
    amp_dtype = amp_dtype_for(loop.precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    steps_per_epoch = max(1, (config["train_rows"] // world_size) // loop.batch_size)
    schedule = build_schedule(loop, steps_per_epoch)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()  # set after a crash or on resume=true
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = restore_training_checkpoint(os.path.join(folder, CHECKPOINT_FILE), model, optimizer, scaler)
    elif settings.resume_from:
        state = restore_training_checkpoint(_resume_file(settings.resume_from), model, optimizer, scaler)
    elif settings.init_weights:
        load_initial_weights(settings.init_weights, model)
    start_epoch = state.epoch

    train_shard = ray.train.get_dataset_shard("train")
    val_shards = {key: ray.train.get_dataset_shard(key) for key in config["val_keys"]}
    before_training = getattr(family, "before_training", None)  # e.g. CocoER's projection pre-training
    if before_training is not None and checkpoint is None and not settings.resume_from and not settings.init_weights:
        # Once per fresh run, before DDP wraps the model (DDP then copies rank 0's result to every rank).
        before_training(model, train_shard.iter_batches(batch_size=loop.eval_batch_size, batch_format="numpy"),
                        loop, device)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=loop.ddp or None)
    nodes, pids = _gather_placement()
    for epoch in range(start_epoch, loop.epochs):
        started = time.perf_counter()
        batches = train_shard.iter_batches(batch_size=loop.batch_size, batch_format="numpy", drop_last=True,
                                           local_shuffle_buffer_size=loop.shuffle_buffer or None,
                                           local_shuffle_seed=settings.seed * 7919 + epoch * 31 + rank)
        generator = epoch_generator(settings.seed, epoch, rank, device)
        train_metrics = train_epoch(model, batches, family, criterion, optimizer, schedule, state, device=device,
                                    augment_cfg=loop.augment, amp_dtype=amp_dtype, scaler=scaler,
                                    grad_clip=loop.grad_clip, generator=generator,
                                    log_every=loop.log_every if rank == 0 else 0,
                                    max_steps=steps_per_epoch, sam_rho=loop.sam_rho)
        val = NOT_VALIDATED
        if validates(epoch, loop):
            evaluate_split = getattr(family, "evaluate", evaluate)
            val = combine_val_reports({
                key: evaluate_split(model, shard.iter_batches(batch_size=loop.eval_batch_size, batch_format="numpy"),
                                    rank=rank, world_size=world_size)
                for key, shard in val_shards.items()}, selected=config["selected_val_keys"])
        state.epoch = epoch + 1
        row = _epoch_row(epoch, train_metrics, val, world_size, start_epoch, nodes, pids, time.perf_counter() - started)
        improved = state.record(row)
        metrics = {k: v for k, v in row.items() if k != "val_per_class"}
        if metrics[SCORE_METRIC] is None:  # Ray ranks the kept checkpoints by it: an epoch not validated ranks last
            metrics[SCORE_METRIC] = float("-inf")
        metrics.update({"best_epoch": state.best_epoch, "best_score": state.best_score, "improved": improved})
        with tempfile.TemporaryDirectory() as folder:
            ray_checkpoint = None
            if rank == 0:
                save_training_checkpoint(os.path.join(folder, CHECKPOINT_FILE), model_name=config["model_name"],
                                         model=model, optimizer=optimizer, state=state,
                                         train_cfg=_checkpoint_record(config), metrics=metrics, scaler=scaler)
                ray_checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=ray_checkpoint)
        if rank == 0:  # after the report: the files list only epochs whose checkpoint was handed over
            history_io.write_history(settings.output, state.history)
            log.info("epoch %d: train loss %.4f, %s %s (%.0f s)", epoch, row["train_loss"], SCORE_METRIC,
                     score_text(row[SCORE_METRIC]), row["epoch_seconds"])


def _checkpoint_record(config: Mapping[str, Any]) -> dict[str, Any]:
    """The job's settings as a checkpoint keeps them (``extra.train_cfg``), with the train
    split's class prior where logit adjustment measured one."""
    record = dict(config["settings"])
    if config["class_prior"] is not None:
        record["train"] = {**record["train"], "class_prior": config["class_prior"]}
    return record


# -- driver -----------------------------------------------------------------------------
@dataclass
class TrainSummary:
    """What a training run produced."""

    output: str
    best_checkpoint: str
    best_epoch: int
    best_val_score: float
    selection_metric: str
    epochs_run: int
    final_epoch: int
    wall_seconds: float
    run_path: str
    train_rows: int
    val_rows: int
    history: list[dict[str, Any]]

    def render(self) -> str:
        lines = [f"{'epoch':>5} {'train_loss':>10} {'val_score':>9}"]
        lines += [f"{r['epoch']:>5} {r['train_loss']:>10.4f} {score_text(r[SCORE_METRIC]):>9}" for r in self.history]
        lines.append(f"best: epoch {self.best_epoch}, {self.selection_metric} {self.best_val_score:.4f} -> "
                     f"{self.best_checkpoint} ({self.wall_seconds:.0f} s)")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if k != "history"}, indent=2)


def _scaling_config(scaling: ScalingSettings) -> ray.train.ScalingConfig:
    """The ``scaling`` group (``jobs/configs/scaling/``) as Ray Train's ScalingConfig."""
    use_gpu = gpus_available() if scaling.use_gpu == "auto" else scaling.use_gpu
    resources = {"CPU": scaling.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=use_gpu, resources_per_worker=resources,
                                   placement_strategy=scaling.placement_strategy)


def _storage(settings: TrainSettings) -> tuple[str, Any, str]:
    """(storage path for RunConfig, pyarrow filesystem or None, the run's URI)."""
    uri = settings.storage_path or storage.join(settings.output, "ray")
    run_uri = storage.join(uri, settings.run_name)
    if storage.is_s3(uri):
        filesystem, path = _filesystem(uri)  # Ray Train's controller does not see this environment
        return path, filesystem, run_uri
    os.makedirs(uri, exist_ok=True)
    return uri, None, run_uri


def _absolute(uri: str) -> str:
    """A local path made absolute (``~`` expanded); URIs unchanged."""
    uri = str(uri)
    return uri if "://" in uri else os.path.abspath(os.path.expanduser(uri))


def _check_resume(settings: TrainSettings, run_uri: str) -> None:
    exists = storage.exists(run_uri) and bool(storage.list_files(run_uri))
    if exists and not settings.resume:
        raise ValueError(f"a training run already exists at {run_uri}: pass resume=true to continue it, "
                         "or choose another output / run_name")
    if exists and settings.resume_from:
        raise ValueError(f"resume_from starts a new run, but {run_uri} already exists: use resume=true to continue "
                         "that run, or another run_name")
    if settings.resume_from and settings.init_weights:
        raise ValueError("resume_from and init_weights both set: resume_from continues a checkpoint's training, "
                         "init_weights starts a new run from its weights; set one")
    if settings.init_weights and settings.init_weights not in KNOWN_WEIGHTS and not storage.exists(settings.init_weights):
        raise ValueError(f"init_weights {settings.init_weights}: no such file (nor a shipped weight name: "
                         f"{', '.join(sorted(KNOWN_WEIGHTS))})")


def model_config(model: ModelSettings, data: DataSettings, labels: tuple[str, ...]) -> dict[str, Any]:
    """The model's network config (``model`` without the job's keys), with the dataset's
    labels."""
    model_cfg = network_config(model.model_dump())
    if model_cfg.get("labels") and list(model_cfg["labels"]) != list(labels):
        raise ValueError(f"model.labels {model_cfg['labels']} differ from the dataset's labels {list(labels)}")
    model_cfg["labels"] = list(labels)
    if data.multi_label is not None:
        model_cfg["multi_label"] = data.multi_label
    return model_cfg


def _export(checkpoint: Any, target: str, model_name: str) -> dict[str, Any]:
    """Write a Ray checkpoint's model to ``target`` without the optimiser state; returns
    the whole checkpoint as loaded."""
    with checkpoint.as_directory() as folder:
        ckpt = load_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
    save_checkpoint(target, model_name=model_name, model_cfg=ckpt["model_cfg"], state_dict=ckpt["state_dict"],
                    labels=ckpt["labels"], epoch=ckpt["epoch"], optimizer_state=None, metrics=ckpt["metrics"],
                    extra={k: v for k, v in (ckpt["extra"] or {}).items() if k != "grad_scaler"})
    return ckpt


def export_best(result: Any, output: str, model_name: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Copy the best checkpoint (by ``val_score``) to ``<output>/best.ckpt`` and the final
    epoch's to ``<output>/last.ckpt``, both without the optimiser state; returns (the best's
    URI, its metrics, the latest checkpoint's extra)."""
    best = result.get_best_checkpoint(metric=SCORE_METRIC, mode="max")
    if best is None:
        raise RuntimeError("the run reported no checkpoint: nothing to export")
    target = storage.join(output, BEST_FILE)
    ckpt = _export(best, target, model_name)
    latest = _export(result.checkpoint, storage.join(output, LAST_FILE), model_name)
    return target, ckpt["metrics"] or {}, latest["extra"] or {}


def run_training(settings: TrainSettings) -> TrainSummary:
    """Train ``settings.model`` on ``settings.data`` with Ray Train; see the module doc."""
    from ray.train.torch import TorchTrainer

    started = time.perf_counter()
    # Workers run in their own folders: local paths must not be relative.
    settings = settings.model_copy(update={key: _absolute(getattr(settings, key))
                                           for key in ("output", "storage_path", "resume_from", "init_weights")
                                           if getattr(settings, key) and getattr(settings, key) not in KNOWN_WEIGHTS})
    teacher = settings.train.distill.teacher
    if teacher and teacher not in KNOWN_WEIGHTS:
        distill = settings.train.distill.model_copy(update={"teacher": _absolute(teacher)})
        settings = settings.model_copy(update={"train": settings.train.model_copy(update={"distill": distill})})
    model_name = settings.model.name
    family = get_family(model_name)  # a family that cannot be trained fails here, before Ray starts
    storage_path, filesystem, run_uri = _storage(settings)
    _check_resume(settings, run_uri)
    # The hook silences Ray Train's per-second PlacementGroupCleaner warning (see ray_env).
    init_ray(settings.ray, worker_setup_hook=QUIET_TRAIN_POLLING_HOOK)

    label_set, labels, samples = _label_info(settings.data)
    model_cfg = model_config(settings.model, settings.data, labels)
    # The model's input contract says which crops to cut; crops shrink images as tagging does.
    contract = input_spec({**model_cfg, "name": model_name})
    if settings.train.distill.teacher:  # read once here, so a wrong teacher fails before any training
        check_teacher(contract, input_spec({"checkpoint": settings.train.distill.teacher}))
    spec = CropSpec(levels=contract.levels, size=contract.input_size, head_expand=settings.data.head_expand,
                    max_side=settings.predictor.max_image_side)
    make_rows = family.row_maker(model_cfg) if hasattr(family, "row_maker") else person_rows
    datasets = build_datasets(settings, spec, samples, labels, label_set, contract.multi_label, make_rows)
    train_rows = datasets["train"].count()
    val_rows = sum(datasets[key].count() for key in val_keys(datasets))
    log.info("training rows: %d, validation rows: %d (%s)", train_rows, val_rows, ", ".join(spec.levels))
    # A new block order every epoch (each execution reseeds), the same in every run of one
    # seed; a resumed run starts that sequence again at its first resumed epoch.
    block_order = ray.data.RandomSeedConfig(seed=settings.seed, reseed_after_execution=True)
    datasets["train"] = datasets["train"].randomize_block_order(seed=block_order)

    failure = ray.train.FailureConfig(max_failures=settings.max_failures)
    checkpoints = ray.train.CheckpointConfig(num_to_keep=settings.keep_checkpoints,
                                             checkpoint_score_attribute=SCORE_METRIC, checkpoint_score_order="max")
    # Workers write metrics and read data through emotion.storage: give them the driver's S3 settings.
    env_vars = forwarded_env()
    run_config = ray.train.RunConfig(name=settings.run_name, storage_path=storage_path,
                                     storage_filesystem=filesystem, failure_config=failure,
                                     checkpoint_config=checkpoints,
                                     worker_runtime_env={"env_vars": env_vars} if env_vars else None)
    prior = None
    if settings.train.logit_adjust_tau > 0:
        prior = class_prior(datasets["train"], len(labels))
        log.info("class prior of the train split: %s", dict(zip(labels, prior)))
    # Ray Train sends the loop's config as plain data; the workers validate it again.
    loop_config = {"settings": settings.model_dump(), "model_name": model_name, "model_cfg": model_cfg,
                   "train_rows": train_rows, "val_keys": val_keys(datasets),
                   "selected_val_keys": selected_val_keys(settings.data, datasets), "class_prior": prior}
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=loop_config,
                           scaling_config=_scaling_config(settings.scaling), run_config=run_config, datasets=datasets,
                           dataset_config=ray.train.DataConfig(datasets_to_split=["train"]))
    result = trainer.fit()
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error

    output = settings.output
    best_uri, best_metrics, latest_extra = export_best(result, output, model_name)
    history = list(latest_extra.get("history") or [])
    summary = TrainSummary(
        output=output, best_checkpoint=best_uri, best_epoch=int(best_metrics["epoch"]),
        best_val_score=float(best_metrics[SCORE_METRIC]),
        selection_metric="mAP" if contract.multi_label else "accuracy", epochs_run=len(history),
        final_epoch=int(history[-1]["epoch"]) if history else -1, wall_seconds=round(time.perf_counter() - started, 1),
        run_path=run_uri, train_rows=train_rows, val_rows=val_rows, history=history,
    )
    history_io.write_history(output, history, {k: v for k, v in asdict(summary).items() if k != "history"})
    storage.write_bytes(storage.join(output, SUMMARY_FILE), summary.to_json().encode())
    return summary
