"""The jobs' settings (tag, eval, train), validated once before anything starts (Ray included).

One model per config group (``detector``, ``predictor``, ``model``, ``data``, ``ray``,
``stages``, ``scaling``, ``train``) and one per job; the serve job's settings, with its
``serve`` group, are ``emotion.pipelines.serving.ServeJobSettings``. The YAML files under
``jobs/configs`` hold every default; these models declare every key (an unknown one is
refused) and say what a valid value is, with no defaults of their own. Each job parses
its config once and passes the settings object down. A mistake raises
``ConfigError`` with one line naming the key, the value and what is allowed, e.g.::

    bad config: detector.score_threshold='abc': Input should be a valid number
    bad config: stages.detect: pool_max (0) must be >= pool_min (1)

Parsing reads no file: whether the output can be written and the checkpoint exists is
``emotion.preflight``, which the jobs run next.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from emotion.models.settings import ModelSettings


class ConfigError(ValueError):
    """A config key has a bad value; the message names it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


Fraction = Field(ge=0.0, le=1.0)


# -- detector, predictor -----------------------------------------------------------------
class RetinaFaceSettings(_Strict):
    name: Literal["retinaface"]
    weights: str
    score_threshold: float = Fraction
    nms_iou: float = Fraction
    max_size: int = Field(ge=32)
    upscale_size: int = Field(ge=0)
    top_k: int = Field(ge=1)
    device: str
    head_expand: float = Field(ge=1.0)


class FullFrameSettings(_Strict):
    """One face per image (``emotion.models.detection.full_frame``); with ``find_face`` the
    ``finder`` (RetinaFace; its ``head_expand`` is not read) puts it into FER2013's framing."""

    name: Literal["full_frame"]
    head_expand: float = Field(ge=1.0)
    find_face: bool
    finder: RetinaFaceSettings


DetectorSettings = Union[RetinaFaceSettings, FullFrameSettings]


class PredictorSettings(_Strict):
    threshold: float = Fraction
    max_people: int = Field(ge=1)
    max_image_side: int = Field(ge=0)  # 0: never shrink
    crops: Literal["auto", "pil", "device"]
    align_faces: bool
    decode: Literal["auto", "pil", "device"]
    precision: Literal["fp32", "fp16", "bf16"]
    # {class name: weight > 0}: single-label scores under another label prior (emotion.score_weights)
    score_weights: Optional[dict[str, Annotated[float, Field(gt=0)]]]


class PredictorConfig(_Strict):
    """The groups a predictor is built from (``emotion.predictor.build_predictor``); the
    tag, eval and serve jobs' settings extend it."""

    detector: DetectorSettings = Field(discriminator="name")
    model: ModelSettings
    predictor: PredictorSettings

    def crop_recipe(self) -> dict[str, object]:
        """The settings that decide which people are found, how each is cut, how its scores
        are weighted and which labels are listed, by dotted key: what rows written by one run
        share with a run that adds to them. Where the work runs (``detector.device``,
        ``predictor.crops``, ``predictor.decode``) and ``predictor.precision`` give the same
        records within rounding, so they are not part of it."""
        # A full-frame detector's finder only finds boxes: its own head margin is not read.
        detector = self.detector.model_dump(exclude={"device": True, "finder": {"device": True, "head_expand": True}})
        predictor = self.predictor.model_dump(include={"threshold", "max_people", "max_image_side", "align_faces"})
        # Only when set: an unweighted run's recipe then equals that of an output whose
        # recipe has no such key.
        if self.predictor.score_weights:
            predictor["score_weights"] = dict(sorted(self.predictor.score_weights.items()))
        return {**_dotted("detector", detector), **{f"predictor.{k}": v for k, v in predictor.items()}}


def _dotted(prefix: str, values: dict[str, object]) -> dict[str, object]:
    """Nested settings as flat ``prefix.key.subkey`` -> value."""
    out: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_dotted(f"{prefix}.{key}", value))
        else:
            out[f"{prefix}.{key}"] = value
    return out


# -- Ray stage sizing --------------------------------------------------------------------
class TaskStage(_Strict):
    batch_size: int = Field(ge=1)
    num_cpus: float = Field(gt=0)
    max_tasks: Optional[int] = Field(ge=1)  # concurrent tasks; None: Ray Data decides


class DecodeStage(TaskStage):
    # Where images are read and decoded: "auto" (in the first actor stage when the
    # cluster has no GPU, else in tasks), true (the actors), false (tasks).
    in_actors: Union[Literal["auto"], bool]


class ActorStage(_Strict):
    pool_min: int = Field(ge=1)
    # "auto": as many actors as the cluster's cores (or GPUs) keep busy, at least pool_min
    # (emotion.tagging.pools.auto_pool_max).
    pool_max: Union[Literal["auto"], int]
    batch_size: int = Field(ge=1)
    num_cpus: float = Field(ge=0)
    num_gpus: Union[Literal["auto"], float]
    gpu_fraction: float = Field(gt=0, le=1)
    torch_threads: Optional[int] = Field(ge=1)
    max_tasks_in_flight: Optional[int] = Field(ge=1)
    # Batches one actor runs at once, each in its own thread (torch, Pillow and NumPy
    # release the GIL): one process, so its imports and models are paid for once.
    concurrent_batches: int = Field(ge=1)
    scheduling_strategy: Optional[Literal["SPREAD", "DEFAULT"]]
    resources: Optional[dict[str, float]]
    max_restarts: int = Field(ge=-1)  # Ray restarts of a dead actor (-1: without end)

    @field_validator("pool_max", mode="before")
    @classmethod
    def _auto_or_count(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("must be 'auto' or a whole number >= 1")

    @model_validator(mode="after")
    def _pool_order(self) -> "ActorStage":
        if self.pool_max != "auto" and self.pool_max < self.pool_min:
            raise ValueError(f"pool_max ({self.pool_max}) must be >= pool_min ({self.pool_min})")
        if isinstance(self.num_gpus, float) and self.num_gpus < 0:
            raise ValueError(f"num_gpus must be 'auto' or >= 0, got {self.num_gpus}")
        return self


class ListStage(_Strict):
    """The tasks that list a large input as the job runs (``emotion.pipelines.tag_inputs``)."""

    block_bytes: int = Field(ge=1024)  # input block size (Ray Data's target_max_block_size for the job)
    read_tasks: int = Field(ge=1)  # the most read tasks one input is split into
    num_cpus: float = Field(gt=0)
    max_tasks: Optional[int] = Field(ge=1)  # concurrent listing tasks; None: Ray Data decides


class Stages(_Strict):
    """The ``stages`` group: tagging's Ray Data stage sizing."""

    wait_for_min_actors_s: Optional[float] = Field(ge=0)
    fuse: bool
    list: ListStage
    decode: DecodeStage
    predict: ActorStage
    detect: ActorStage
    recognize: ActorStage


class RaySettings(_Strict):
    """The ``ray`` group: how to reach Ray (every job)."""

    address: Optional[str]
    num_cpus: Optional[int] = Field(ge=1)
    num_gpus: Optional[int] = Field(ge=0)
    include_dashboard: bool
    log_to_driver: bool
    object_store_memory: Optional[int] = Field(ge=78_643_200)  # None: Ray sizes it


# -- the job -----------------------------------------------------------------------------
class TagSettings(PredictorConfig):
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    path_column: str = Field(min_length=1)
    resume: bool
    retry_errors: bool
    break_lock: bool
    limit: Optional[int] = Field(ge=1)
    max_pixels: int = Field(ge=1)
    max_file_bytes: int = Field(ge=1)
    commit_every_rows: int = Field(ge=1)
    commit_max_rows: int = Field(ge=1)
    commit_every_s: float = Field(gt=0)
    pipeline_retries: int = Field(ge=0)
    read_timeout_s: Optional[float] = Field(gt=0)
    stall_warn_s: float = Field(ge=0)
    inline_inputs: int = Field(ge=0)
    summary_json: Optional[str]
    progress_every_s: float = Field(ge=0)
    echo_images: int = Field(ge=0)
    annotate: Optional[str]
    ray: RaySettings
    stages: Stages


# -- eval and train ---------------------------------------------------------------------
# The ``data`` group: one class per format (``jobs/configs/data/*.yaml``), told apart by
# ``format``; ``options`` are the reader's keyword arguments (``emotion.data.READERS``).
class _Data(_Strict):
    root: str = Field(min_length=1)
    head_expand: float = Field(ge=1.0)
    multi_label: Optional[bool]  # null: the model's setting


class _Splits(_Strict):
    train_split: Optional[str]
    val_split: Optional[str]  # the best checkpoint is chosen on this split
    test_split: Optional[str]
    split: Optional[str]  # what `emotion eval` scores (null: test_split)


class EmoticOptions(_Strict):
    annotations_uri: Optional[str]  # null: <root>/Annotations.mat
    images_root: Optional[str]  # null: <root>/emotic
    drop_unlabelled: bool


class EmoticData(_Data, _Splits):
    format: Literal["emotic"]
    options: EmoticOptions


class SyntheticData(_Data, _Splits):
    """Scenes of ``emotion data synth`` / ``scenes_v2``, in EMOTIC's layout."""

    format: Literal["synthetic"]
    options: EmoticOptions


class CaerOptions(_Strict):
    face_boxes_uri: Optional[str]  # a CSV path,x1,y1,x2,y2 of the faces


class CaerData(_Data, _Splits):
    format: Literal["caer"]
    options: CaerOptions


class ImageFolderOptions(_Strict):
    image_size: Optional[tuple[int, int]]  # (width, height) of every image: headers are not read


class ImageFolderData(_Data, _Splits):
    format: Literal["image_folder"]
    options: ImageFolderOptions


class FerData(_Data, _Splits):
    format: Literal["fer"]
    options: ImageFolderOptions


FerplusMode = Literal["majority", "probability", "crossentropy", "multi_target"]


class FerplusOptions(_Strict):
    mode: FerplusMode
    fer2013_root: Optional[str]
    fer2013_weight: float = Fraction
    fer2013_image_prob: float = Fraction


class FerplusData(_Data, _Splits):
    format: Literal["ferplus"]
    mode: FerplusMode  # how the train split's votes become targets (emotion.data.ferplus)
    fer2013_root: Optional[str]  # FER2013's class folders: its own label of each train face
    fer2013_weight: float = Fraction  # weight of that label in the target
    fer2013_image_prob: float = Fraction  # share of matched train faces read from FER2013's copy
    options: FerplusOptions


class PreparedData(_Data, _Splits):
    """Parquet shards of ``emotion data prepare``, read by Ray Data: no reader options."""

    format: Literal["prepared"]


class FoldsSettings(_Strict):
    """Cross-validation of a mixture source's train_split (``emotion.data.mixture``)."""

    count: int = Field(ge=2)
    held_out: int = Field(ge=0)  # the fold scored as the source's validation set

    @model_validator(mode="after")
    def _held_out_is_a_fold(self) -> "FoldsSettings":
        if self.held_out >= self.count:
            raise ValueError(f"held_out ({self.held_out}) must be below count ({self.count})")
        return self


class SourceData(_Strict):
    """One dataset of a mixture (``data.sources.<name>``; ``emotion.data.mixture``)."""

    format: str = Field(min_length=1)
    root: str = Field(min_length=1)
    weight: float = Field(ge=0)  # times its train images appear in an epoch (0: scored only)
    train_split: Optional[str] = Field(min_length=1)
    val_split: Optional[str] = Field(min_length=1)
    select: bool  # its val_split counts toward val_score, by which the best checkpoint is chosen
    options: dict[str, Any]  # the source format's reader options
    folds: Optional[FoldsSettings]  # null, or train_split cut into folds, one held out as validation

    @property
    def trained(self) -> bool:
        """Its train split is in the epochs."""
        return self.weight > 0 and self.train_split is not None

    @property
    def scored(self) -> bool:
        """It has validation rows: its val_split, or its held-out fold."""
        return self.val_split is not None or self.folds is not None

    @model_validator(mode="after")
    def _trained_or_scored(self) -> "SourceData":
        if self.weight > 0 and self.train_split is None:
            raise ValueError(f"weight {self.weight} > 0 needs a train_split")
        if self.folds is not None and self.train_split is None:
            raise ValueError("folds needs the train_split it cuts into folds")
        if self.folds is not None and self.val_split is not None:
            raise ValueError(f"with folds the held-out fold is the validation set, so val_split must be null "
                             f"(got {self.val_split!r})")
        if not self.trained and not self.scored:
            raise ValueError("neither trained on (weight > 0) nor scored (val_split or folds)")
        return self


class SourcesData(_Data):
    """Several datasets trained as one label space (``data=faces``)."""

    format: Literal["sources"]
    label_set: str = Field(min_length=1)
    sources: dict[str, SourceData]

    @field_validator("sources")
    @classmethod
    def _one_trained_one_selected(cls, sources: dict[str, SourceData]) -> dict[str, SourceData]:
        if not sources:
            raise ValueError("empty: name at least one dataset")
        if not any(source.trained for source in sources.values()):
            raise ValueError("no source is trained on (every weight is 0)")
        if not any(source.select and source.scored for source in sources.values()):
            raise ValueError("no source is selected (select: true with a val_split or folds) to choose the best "
                             "checkpoint by")
        return sources


DataSettings = Annotated[Union[EmoticData, SyntheticData, CaerData, ImageFolderData, FerData, FerplusData,
                               PreparedData, SourcesData], Field(discriminator="format")]


def reader_options(data: DataSettings) -> dict[str, Any]:
    """The keyword arguments of the data group's reader (``options``; prepared shards and
    mixtures have none)."""
    options = getattr(data, "options", None)
    return options.model_dump() if options is not None else {}


class EvalSettings(PredictorConfig):
    batch_size: int = Field(ge=1)
    limit_per_class: Optional[int] = Field(ge=1)
    confusion_png: Optional[str]
    output_json: Optional[str]
    limit: Optional[int] = Field(ge=1)
    protocol: Literal["auto", "scenes"]
    data: DataSettings


class ScalingSettings(_Strict):
    """The ``scaling`` group: Ray Train workers."""

    num_workers: int = Field(ge=1)
    use_gpu: Union[Literal["auto"], bool]
    cpus_per_worker: float = Field(gt=0)
    gpus_per_worker: float = Field(gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"]


class AugmentSettings(_Strict):
    flip: bool
    max_rotation_deg: float = Field(ge=0, le=180)
    min_scale: float = Field(gt=0, le=1)
    max_scale: float = Field(ge=1, le=2)
    max_shift: float = Field(ge=0, lt=1)
    brightness: float = Field(ge=0, le=1)
    contrast: float = Field(ge=0, le=1)
    erase_prob: float = Fraction
    downscale_prob: float = Fraction
    min_downscale: float = Field(gt=0, le=1)
    grayscale_prob: float = Fraction


DSCTLoss = Literal["person", "emotion", "bbox", "giou"]


class DSCTLossWeights(_Strict):
    """Weight of each DSCT loss term (``emotion.models.dsct.criterion``)."""

    person: float = Field(ge=0)
    emotion: float = Field(ge=0)
    bbox: float = Field(ge=0)
    giou: float = Field(ge=0)


class MatcherCosts(_Strict):
    """The Hungarian matcher's cost weights (``emotion.models.dsct.matcher``)."""

    cost_class: float = Field(ge=0)
    cost_emotion: float = Field(ge=0)
    cost_bbox: float = Field(ge=0)
    cost_giou: float = Field(ge=0)


class DSCTTrainSettings(_Strict):
    """``train.dsct``: DSCT's set criterion and backbone learning rate
    (``emotion.training.dsct_family``)."""

    loss_weights: DSCTLossWeights
    losses: list[DSCTLoss] = Field(min_length=1)  # the terms computed
    aux_loss: bool  # the same terms on every earlier decoder layer
    focal_alpha: float = Fraction  # sigmoid focal loss (person and emotion terms, matcher cost)
    focal_gamma: float = Field(ge=0)
    matcher: MatcherCosts
    backbone_lr_scale: float = Field(gt=0)  # the backbone's learning rate as a share of train.lr


class ProjectionSettings(_Strict):
    """``train.projection``: CocoER's pre-training of the vocabulary projection ω
    (``emotion.training.cocoer_family``)."""

    steps: int = Field(ge=0)  # AdamW steps on ω alone; 0 skips it
    lr: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    weight_decay: float = Field(ge=0)
    max_images: int = Field(ge=1)  # training rows embedded for it
    seed: int


class DistillSettings(_Strict):
    """``train.distill``: knowledge distillation from a trained teacher
    (``emotion.training.distillation``)."""

    teacher: Optional[str]  # a checkpoint (path, s3:// URI or shipped name); null: no distillation
    weight: float = Fraction  # w: loss = (1 - w) * the family's loss + w * the distillation term
    temperature: float = Field(gt=0)  # T: both softmaxes read logits / T


class LoopSettings(_Strict):
    """The ``train`` group: the training loop. ``loss_weights`` (CocoER's terms) is checked
    by the family (``emotion.training.families``); ``dsct`` and ``projection`` are read by
    the DSCT and CocoER families only."""

    epochs: int = Field(ge=1)
    validate_from_epoch: int = Field(ge=0)  # earlier epochs skip validation (the last epoch never does)
    batch_size: int = Field(ge=1)  # per worker
    eval_batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    schedule: Literal["cosine", "step", "constant"]
    warmup_epochs: float = Field(ge=0)
    min_lr_factor: float = Fraction
    step_epochs: int = Field(ge=1)
    gamma: float = Field(gt=0)
    label_smoothing: float = Field(ge=0, lt=1)
    target_mode: Literal["majority", "probability", "crossentropy", "multi_target"]
    sam_rho: float = Field(ge=0)
    logit_adjust_tau: float = Field(ge=0)
    grad_clip: Optional[float] = Field(ge=0)  # None or 0: no clipping
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    torch_threads: Optional[int] = Field(ge=1)
    shuffle_buffer: Optional[int] = Field(ge=0)  # None or 0: no local shuffle
    rows_per_task: int = Field(ge=1)
    log_every: int = Field(ge=0)  # 0: no progress lines
    loss_weights: Optional[dict[str, float]]
    dsct: DSCTTrainSettings
    ddp: Optional[dict[str, Any]]
    projection: ProjectionSettings
    augment: AugmentSettings
    distill: DistillSettings


class TrainSettings(_Strict):
    output: str = Field(min_length=1)
    storage_path: Optional[str]
    run_name: str = Field(min_length=1)
    resume: bool
    resume_from: Optional[str]
    init_weights: Optional[str]
    max_failures: int = Field(ge=0)
    keep_checkpoints: int = Field(ge=1)
    seed: int
    limit: Optional[int] = Field(ge=1)
    train: LoopSettings
    model: ModelSettings
    data: DataSettings
    predictor: PredictorSettings
    ray: RaySettings
    scaling: ScalingSettings

    @field_validator("predictor")
    @classmethod
    def _no_score_weights(cls, predictor: PredictorSettings) -> PredictorSettings:
        if predictor.score_weights:
            raise ValueError("score_weights apply at inference (tag, serve, eval); training learns the model's own "
                             "scores: leave it null")
        return predictor


# -- the data commands -------------------------------------------------------------------
class SynthSettings(_Strict):
    """``emotion data synth`` (``emotion.data.synthetic.build_synthetic``)."""

    root: str = Field(min_length=1)
    n_train: int = Field(ge=0)
    n_val: int = Field(ge=0)
    n_test: int = Field(ge=0)
    conflict_rate: float = Fraction  # share of images whose levels disagree
    seed: int
    image_size: int = Field(ge=32)  # side of the square images
    max_people: int = Field(ge=1)
    jpeg_quality: int = Field(ge=1, le=100)


class ScenesV2Settings(_Strict):
    """``emotion data scenes_v2`` (``emotion.data.synthetic.scenes_v2.build_scenes_v2``);
    the keys after ``jpeg_quality`` are ``ScenesV2Params`` in config form
    (``params_from_config`` checks them)."""

    root: str = Field(min_length=1)
    faces: Optional[str]  # FER+ root; the command refuses to run without it
    n_train: int = Field(ge=0)
    n_val: int = Field(ge=0)
    n_test: int = Field(ge=0)
    seed: int
    image_size: int = Field(ge=32)  # side of the square images
    jpeg_quality: int = Field(ge=1, le=100)
    body_states: dict[str, float]
    context_states: dict[str, float]
    relations: dict[str, float]
    people_weights: list[float]
    weak_body_strength: tuple[float, float]
    weak_context_alpha: tuple[float, float]
    min_face_px: float
    max_height: float
    crowd_shrink: float
    max_face_covered: float
    placement_tries: int


_SECRET_WORDS = ("token", "secret", "password")


def _key_and_value(loc: tuple, data: Mapping) -> tuple[list[str], Any]:
    """The config path of an error location and the value there. Inside a discriminated
    union pydantic adds the member's tag to the location (``detector.retinaface.top_k``):
    the key after a mapping that equals its ``name`` or ``format`` is that tag, once."""
    parts: list[str] = []
    value: Any = data
    tag_seen = False
    for part in loc:
        if not tag_seen and isinstance(value, Mapping) and isinstance(part, str) and part in (
                value.get("name"), value.get("format")):
            tag_seen = True
            continue
        parts.append(str(part))
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, (list, tuple)) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            value = None
        tag_seen = False
    return parts, value


def _describe(error: Mapping[str, Any], data: Mapping, prefix: str = "") -> str:
    loc, value = _key_and_value(error["loc"], data)
    key = ".".join([prefix, *loc] if prefix else loc)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if error["type"] == "missing":
        return f"{key}: missing (required)"
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):  # e.g. model.name=bogus
        tag_key = ".".join(p for p in (key, error["ctx"]["discriminator"].strip("'")) if p)
        if error["type"] == "union_tag_not_found":
            return f"{tag_key}: missing (required)"
        return f"{tag_key}={error['ctx']['tag']!r}: not one of {error['ctx']['expected_tags']}"
    secret = any(word in key.lower() for word in _SECRET_WORDS)  # never echo a credential
    shown = f"={value!r}" if value is not None and not isinstance(value, Mapping) and not secret else ""
    return f"{key}{shown}: {message}"


def parse_settings(model: type[BaseModel], data: Mapping, what: str = "config", prefix: str = "") -> Any:
    """Validate ``data`` (the config section at ``prefix``); a mistake raises
    ``ConfigError`` with one line naming the key."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"bad {what}: {_describe(first, data, prefix)}{more}") from None


def parse_eval_settings(cfg: Mapping) -> EvalSettings:
    return parse_settings(EvalSettings, cfg)


def parse_train_settings(cfg: Mapping) -> TrainSettings:
    return parse_settings(TrainSettings, cfg)


def parse_tag_settings(cfg: Mapping) -> TagSettings:
    return parse_settings(TagSettings, cfg)
