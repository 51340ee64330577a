"""The tagging job on Ray Data: images in, one Parquet row per person out.

    listing (driver, or tasks) ─▶ read + decode (tasks) ─▶ detect (actor pool) ─▶ recognize (actor pool)
            ─▶ driver: UnitWriter commits whole images in small atomic units ─▶ Parquet

A small input is listed on the driver before the job starts; a large one (above
``inline_inputs`` files) is listed by Ray Data read tasks, folder by folder (or prefix by
prefix), as the job runs (``emotion.pipelines.tag_inputs``), so the first images are
tagged within seconds and the driver's memory does not grow with the input.

On a machine without a GPU the first actor stage reads and decodes its own batches
(``stages.decode.in_actors``): no decode tasks, so no extra worker processes start while
the actors load their models, and no decoded image travels through the object store.

Every input image appears exactly once in the output. Output is committed as the job goes
(every ``commit_every_rows`` rows or ``commit_every_s`` seconds), so a crash loses only
the last unit's worth of work, and re-running over the same output skips images already
there (resume); ``retry_errors=true`` also tags again the images whose rows are errors.
A lock in the output refuses a second concurrent run. The parts that do not need Ray
(inputs, output units, resume, the lock, pool sizes, progress) are in ``emotion.tagging``;
what runs in the tasks and actors is in ``emotion.pipelines.tag_stages``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping

import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from emotion import storage
from emotion.models.protocol import InputSpec
from emotion.models.loading import input_spec
from emotion.pipelines.job_board import JobBoard
from emotion.pipelines.ray_env import forwarded_env, gpus_available, init_ray
from emotion.pipelines.tag_inputs import input_dataset
from emotion.pipelines.tag_stages import DetectStage, PredictStage, RecognizeStage, read_and_decode
from emotion.schema import output_schema
from emotion.settings import ActorStage, PredictorConfig, Stages, TagSettings, parse_tag_settings
from emotion.tagging.digests import ResumeSets, SourceSet
from emotion.tagging.inputs import InputPlan, plan_inputs
from emotion.tagging.lock import OutputLock
from emotion.tagging.output import drop_superseded, remove_partial_writes, scan_output, scan_units
from emotion.tagging.pools import auto_pool_max, decodes_in_actors, most_batches
from emotion.tagging.progress import PipelineCounts, ProgressPrinter
from emotion.tagging.sources import source_blocks
from emotion.tagging.summary import TagSummary
from emotion.tagging.units import UnitWriter, WriteStats

log = logging.getLogger(__name__)

def _pool(stage: ActorStage, use_gpu: bool, batches: int | None = None) -> dict[str, Any]:
    """``map_batches`` arguments for an actor stage. ``batches``: the most batches it will
    get, if known; a pool larger than that would start actors (each loading the models,
    competing for the cores with the ones that work) that never get a batch."""
    num_gpus = (stage.gpu_fraction if use_gpu else 0.0) if stage.num_gpus == "auto" else float(stage.num_gpus)
    pool_max = auto_pool_max(stage, num_gpus, ray.cluster_resources()) if stage.pool_max == "auto" else stage.pool_max
    pool_min = stage.pool_min
    if batches is not None:
        pool_min, pool_max = min(pool_min, batches), min(pool_max, batches)
    args = {
        "compute": ActorPoolStrategy(
            min_size=pool_min, max_size=pool_max,
            # Fewer queued batches per actor spread work across actors (and nodes) more evenly.
            max_tasks_in_flight_per_actor=stage.max_tasks_in_flight,
            **_threads(stage.concurrent_batches),
        ),
        "batch_size": stage.batch_size,
        "num_cpus": stage.num_cpus,
        "num_gpus": num_gpus,
        "max_restarts": stage.max_restarts,
    }
    if stage.scheduling_strategy:
        # SPREAD places a pool's actors on different nodes where it can (clusters).
        args["scheduling_strategy"] = stage.scheduling_strategy
    if stage.resources:
        # Custom resources per actor. Placement guarantee where SPREAD is best effort: with
        # one unit of a resource on each node, asking for one unit gives one actor per node.
        args["resources"] = dict(stage.resources)
    return args


@contextlib.contextmanager
def _remote_args_through_catch_all() -> Iterator[None]:
    """Ray 2.60's ``map_batches`` names no parameter for ``max_restarts`` and
    ``scheduling_strategy``: they go through its ``**ray_remote_args``, which warns that it
    is deprecated on every call. The arguments still work; the warning is dropped here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated", category=DeprecationWarning)
        yield


def _threads(concurrent_batches: int) -> dict[str, Any]:
    """``ActorPoolStrategy`` arguments for ``concurrent_batches`` batches at once per actor.

    Ray Data otherwise runs one call at a time in an actor, whatever Ray's
    ``max_concurrency``; the stages hold no per-call state, so threads are safe.
    """
    if concurrent_batches <= 1:
        return {}
    return {"max_concurrent_calls_per_actor": concurrent_batches, "enable_true_multi_threading": True}


def _wait_for_pools(seconds: float | None) -> None:
    """Make every actor pool start only once its initial actors are up (model loaded).

    Without it the first ready actor takes batches while the others are still loading,
    so on a short job one node can do all the work.
    """
    if seconds is not None and seconds > 0:
        ray.data.DataContext.get_current().wait_for_min_actors_s = int(math.ceil(seconds))


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
    plan = plan_inputs(settings.input, settings.path_column, settings.inline_inputs)
    if plan.entries is not None and settings.limit:
        plan.entries = plan.entries[: settings.limit]
        plan.total = len(plan.entries)
    with OutputLock(output, break_lock=settings.break_lock) as lock, \
            ThreadPoolExecutor(1, thread_name_prefix="input-spec") as background:
        remove_partial_writes(output)
        state = scan_output(output) if settings.resume else None
        # The model's input contract (crops, labels, id) comes from its config: no network
        # is built, but the driver imports torch and reads the checkpoint for it (1-2 s of
        # CPU), so that runs while Ray starts, which mostly waits on its own processes.
        spec_loading = background.submit(input_spec, settings.model.model_dump())
        resume = ResumeSets(done=state.done.digests if state is not None else SourceSet().digests,
                            retry=state.failed.digests if state is not None and settings.retry_errors
                            else SourceSet().digests)
        todo, retried = resume.todo(plan.entries) if plan.entries is not None else (None, 0)
        if todo is None or todo:
            init_ray(settings.ray)
        spec = spec_loading.result()  # a bad model or checkpoint raises here, before any row is dropped or written
        if state is not None:
            state.check_model(spec.model_id)
            state.check_recipe(settings.crop_recipe())
        if state is not None and state.repeated:
            drop_superseded(state)
        summary = TagSummary(retried_errors=retried, output=output,
                             quarantined=list(state.quarantined) if state is not None else [])
        if todo is not None:
            summary.listed = len(plan.entries)
            summary.skipped_already_tagged = len(plan.entries) - len(todo)
            log.info("%d images listed, %d already tagged, %d to tag (%d of them earlier errors)",
                     summary.listed, summary.skipped_already_tagged, len(todo), retried)
        else:
            log.info("%s: %d shards listed as the job runs; %d images already in the output",
                     settings.input, len(plan.shards), len(resume.done))
        if todo is None or todo:
            _tag(settings, spec, plan, todo, resume, summary, lock)
            if summary.retried_errors:
                drop_superseded(scan_output(output))  # the new rows replace the old error rows
    summary.seconds = time.perf_counter() - started
    return summary


def _tag(settings: TagSettings, spec: InputSpec, plan: InputPlan, todo: list[tuple[str, int]] | None,
         resume: ResumeSets, summary: TagSummary, lock: OutputLock) -> None:
    """Run the pipeline over ``todo`` (a small input) or ``plan``'s shards, committing
    units into ``summary.output``, on the Ray that ``tag_images`` started.

    A worker that dies (killed, out of memory, its node lost) stops Ray Data's run; the
    pipeline then starts again over what is not committed yet, up to ``pipeline_retries``
    times, so the job still tags every image once. Ray's own actor restarts cannot be
    relied on here (``stages.*.max_restarts``).
    """
    started = time.perf_counter()
    retried_before = 0  # earlier errors that this job's interrupted runs tagged again
    for attempt in range(settings.pipeline_retries + 1):
        committed_before = summary.images
        try:
            listing = _run_pipeline(settings, spec, plan, todo, resume, summary, lock)
        except ray.exceptions.RayActorError as exc:
            if attempt == settings.pipeline_retries or exc.actor_init_failed:
                raise
            log.warning("a tagging worker died (%s); starting the pipeline again over the images not committed "
                        "yet (retry %d of %d)", str(exc).splitlines()[0], attempt + 1, settings.pipeline_retries)
            print(f"[tag] a worker died; starting again over the images not committed yet "
                  f"(retry {attempt + 1} of {settings.pipeline_retries})", flush=True)
            to_retry = len(resume.retry)
            resume = _after_partial_run(summary, resume)
            retried_before += to_retry - len(resume.retry)
            if todo is not None:
                todo = resume.todo(plan.entries)[0]
            continue
        if listing is not None:
            # The last run's listing skipped, as done, what this job's interrupted runs committed.
            summary.listed = listing["listed"]
            summary.skipped_already_tagged = listing["skipped"] - committed_before
            summary.retried_errors = listing["retried"] + retried_before
        break
    summary.pipeline_seconds = time.perf_counter() - started
    summary.images_per_second = summary.images / summary.pipeline_seconds if summary.pipeline_seconds > 0 else 0.0


def _after_partial_run(summary: TagSummary, resume: ResumeSets) -> ResumeSets:
    """The resume sets once this job has committed ``summary.files``: everything in the
    output is done; an earlier error this job already tagged again is not retried twice."""
    state = scan_output(summary.output)
    this_job = scan_units(summary.files)
    retry = resume.retry[~this_job.contains(resume.retry)] if len(resume.retry) else resume.retry
    return ResumeSets(done=state.done.digests, retry=retry)


def _run_pipeline(settings: TagSettings, spec: InputSpec, plan: InputPlan, todo: list[tuple[str, int]] | None,
                  resume: ResumeSets, summary: TagSummary, lock: OutputLock) -> dict[str, int] | None:
    """One Ray Data run of the pipeline; adds what it committed to ``summary``. Returns the
    listing tasks' counts (``JobBoard.listing``) when they listed the input, else None."""
    use_gpu = gpus_available()
    # What the actors build their predictor from (a pydantic model travels to them pickled).
    predictor_config = PredictorConfig(detector=settings.detector, model=settings.model, predictor=settings.predictor)
    schema = output_schema(list(spec.labels), spec.model_id, settings.crop_recipe())

    stages = settings.stages
    _wait_for_pools(stages.wait_for_min_actors_s)
    env = forwarded_env()
    remote_env = {"runtime_env": {"env_vars": env}} if env else {}
    block = stages.decode.batch_size
    board = JobBoard(lock.run_id)
    if todo is not None:
        # from_blocks (a Ray Data developer API) reads the blocks' metadata here; from_arrow
        # runs a remote task per block for it in Ray's prestarted workers, which then sat idle
        # while every actor started a process of its own.
        ds = ray.data.from_blocks(source_blocks(todo, block))
        images, listing_tasks = len(todo), 0
    else:
        listing = stages.list
        ds, listing_tasks = input_dataset(
            plan, resume, path_column=settings.path_column, run_id=lock.run_id, limit=settings.limit,
            num_cpus=listing.num_cpus, max_tasks=listing.max_tasks, read_tasks=listing.read_tasks,
            block_bytes=listing.block_bytes)
        images = None
    decode_kwargs = {"max_side": settings.predictor.max_image_side, "max_pixels": settings.max_pixels,
                     "max_file_bytes": settings.max_file_bytes, "read_timeout_s": settings.read_timeout_s}
    decode_in_actors = decodes_in_actors(stages.decode.in_actors, use_gpu)
    if not decode_in_actors:
        decode_tasks = stages.decode.max_tasks
        ds = ds.map_batches(
            read_and_decode,
            batch_size=block,
            num_cpus=stages.decode.num_cpus,
            # Each concurrent decode task is a worker process that imports Ray Data when it
            # starts: on a small machine a cap keeps that start-up off the model actors' cores.
            **({"compute": TaskPoolStrategy(size=decode_tasks)} if decode_tasks else {}),
            **remote_env,
            fn_kwargs=decode_kwargs,
        )
    first_stage_decode = decode_kwargs if decode_in_actors else None
    watch = {"run_id": lock.run_id, "stall_warn_s": settings.stall_warn_s}
    with _remote_args_through_catch_all():
        ds = _model_stages(ds, stages, predictor_config, spec, use_gpu, images, block, first_stage_decode, watch,
                           remote_env)
    storage.makedirs(summary.output)
    writer = UnitWriter(summary.output, schema, settings.commit_every_rows, settings.commit_every_s,
                        run_started=lock.started, run_id=lock.run_id, first_seq=len(summary.files),
                        max_rows=settings.commit_max_rows)
    pipeline_started = time.perf_counter()
    first_output, first_images = None, 0
    counts = PipelineCounts()
    progress = ProgressPrinter(counts, writer, board, images=images, listing_tasks=listing_tasks,
                               listing_total=plan.total, every_s=settings.progress_every_s,
                               stall_warn_s=settings.stall_warn_s)
    try:
        with progress, writer:
            for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                counts.add(table)
                if first_output is None:
                    first_output, first_images = time.perf_counter(), counts.images
                writer.add(table)
        listing = board.listing() if todo is None else None
    finally:
        board.clear()
        _add_run(summary, writer.stats, counts)
    ended = time.perf_counter()
    if first_output is not None and not summary.first_output_seconds:
        # Start-up (actors loading their models) is paid before the first rows come out.
        summary.first_output_seconds = first_output - pipeline_started
        after = ended - first_output
        summary.steady_images_per_second = (writer.stats.images - first_images) / after if after > 0 else 0.0
    return listing


def _add_run(summary: TagSummary, stats: WriteStats, counts: PipelineCounts) -> None:
    """Add one pipeline run's committed work to the job's summary."""
    summary.images += stats.images
    summary.people += stats.people
    summary.errors += stats.errors
    for name, n in stats.emotions.items():
        summary.emotions[name] = summary.emotions.get(name, 0) + n
    summary.files += stats.units
    for node, n in counts.images_by_node.items():
        summary.images_by_node[node] = summary.images_by_node.get(node, 0) + n


def _model_stages(ds: ray.data.Dataset, stages: Stages, predictor_config: PredictorConfig, spec: InputSpec,
                  use_gpu: bool, images: int | None, block: int, first_stage_decode: dict | None, watch: dict,
                  remote_env: dict) -> ray.data.Dataset:
    """The actor stages: one fused predict pool, or detect then recognize pools."""
    if stages.fuse:
        predict = stages.predict
        ds = ds.map_batches(
            PredictStage,
            fn_constructor_kwargs={"cfg": predictor_config, "spec": spec, "torch_threads": predict.torch_threads,
                                   "decode": first_stage_decode, **watch},
            **_pool(predict, use_gpu, _most_batches(images, block, predict)),
            **remote_env,
        )
    else:
        detect, recognize = stages.detect, stages.recognize
        ds = ds.map_batches(
            DetectStage,
            fn_constructor_kwargs={"cfg": predictor_config, "spec": spec, "torch_threads": detect.torch_threads,
                                   "decode": first_stage_decode, **watch},
            **_pool(detect, use_gpu, _most_batches(images, block, detect)),
            **remote_env,
        )
        ds = ds.map_batches(
            RecognizeStage,
            fn_constructor_kwargs={"cfg": predictor_config, "spec": spec, "torch_threads": recognize.torch_threads},
            **_pool(recognize, use_gpu),
            **remote_env,
        )
    return ds


def _most_batches(images: int | None, block: int, stage: ActorStage) -> int | None:
    return None if images is None else most_batches(images, block, stage.batch_size)
