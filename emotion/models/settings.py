"""The ``model`` config group: one settings class per model family.

Each family has two classes:

* ``<Family>Config``: the keys its network is built from. It is the mapping
  ``emotion.models.registry.build_model(name, cfg)`` takes, the model's ``config``, and
  what a checkpoint saves;
* ``<Family>Settings``: the same keys plus a job's (``name``, the ``checkpoint`` to load,
  the ``device``; DSCT's ``score_threshold``): the ``model`` group as
  ``jobs/configs/model/<name>.yaml`` holds it.

Neither has defaults and both refuse unknown keys: every key is in the family's YAML
(``yaml_config`` reads it). ``ModelSettings`` is the union the job settings use
(``emotion.settings``), told apart by ``name``. ``labels`` may be null in a config
(training takes them from the dataset); building a network needs them.

No torch here: jobs check their config with these classes before anything starts.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from emotion.config_files import group_option
from emotion.models.protocol import LEVELS, plain_config

Level = Literal["head", "body", "context"]
# DSCT's subject-context relation biases (emotion.models.dsct.relations).
Relation = Literal["spatial", "semantic"]
Fraction = Field(ge=0.0, le=1.0)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class _JobKeys(_Strict):
    """The keys of a job's ``model`` group that are not the network's."""

    # A checkpoint to load (a KNOWN_WEIGHTS name, local path or s3:// URI); "???": required;
    # null: the network as its config builds it.
    checkpoint: Optional[str]
    device: str  # "auto": CUDA when the machine has it, else CPU

    config_class: ClassVar[type[_Strict]]


# -- fer: the mini-Xception of the `fer` package -----------------------------------------
class FerConfig(_Strict):
    weights: Optional[str]  # a KNOWN_WEIGHTS name, local path or s3:// URI; null: random weights


class FerSettings(FerConfig, _JobKeys):
    name: Literal["fer"]
    config_class: ClassVar[type[_Strict]] = FerConfig


# -- face_cnn, qcs: face classifiers trained here ----------------------------------------
class _Classifier(_Strict):
    labels: Optional[list[str]]  # class names in score order
    multi_label: bool
    backbone: str  # emotion.models.backbones.BACKBONES
    backbone_weights: Optional[str]  # null: the packaged ImageNet weights
    pretrained: bool  # false: random init (checkpoints bring their own weights)
    input_size: int = Field(ge=32)
    dropout: float = Fraction
    grayscale: bool


class FaceCNNConfig(_Classifier):
    pass


class FaceCNNSettings(FaceCNNConfig, _JobKeys):
    name: Literal["face_cnn"]
    config_class: ClassVar[type[_Strict]] = FaceCNNConfig


class QCSConfig(_Classifier):
    embed_dim: int = Field(ge=8)
    equalize: bool  # histogram-equalise the gray face first
    cross_similarity: bool  # false: no attention, no refined branch (the baseline)
    test_flip: bool  # inference averages the scores of the face and its mirror image
    class_prior: Optional[list[float]]  # share of each class in the training data
    prior_correction: float  # tau: inference subtracts tau * log(class_prior) from the logits

    @model_validator(mode="after")
    def _consistent(self) -> "QCSConfig":
        if self.equalize and not self.grayscale:
            raise ValueError("qcs equalize=true needs grayscale=true (the gray face is what is equalised)")
        if self.multi_label:
            raise ValueError("qcs is a single-label model (quadruplets need one class per image): "
                             "multi_label must be false")
        if self.prior_correction and (not self.class_prior or (
                self.labels is not None and len(self.class_prior) != len(self.labels))):
            raise ValueError(f"qcs prior_correction={self.prior_correction} needs class_prior: one share per "
                             f"label ({len(self.labels or [])})")
        return self


class QCSSettings(QCSConfig, _JobKeys):
    name: Literal["qcs"]
    config_class: ClassVar[type[_Strict]] = QCSConfig


# -- cocoer: the joint head + body + context model ---------------------------------------
class CocoERConfig(_Strict):
    labels: Optional[list[str]]
    multi_label: bool
    backbone: Union[str, dict[Level, str]]  # one name for every level, or one per level
    backbone_weights: Union[None, str, dict[Level, Optional[str]]]
    vocab_backbone: str  # frozen image encoder of the vocabulary branch
    vocab_backbone_weights: Optional[str]
    pretrained: bool  # ImageNet backbones and text prototypes; false: random (checkpoints, tests)
    prototypes_from_text: Optional[bool]  # null: as pretrained
    text_encoder: str
    text_template: str
    text_dim: int = Field(ge=1)
    input_size: int = Field(ge=1)
    d_h: int = Field(ge=1)
    d: int = Field(ge=1)
    n_blocks: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    d_ff: int = Field(ge=1)
    dropout: float = Fraction
    pooling: Literal["mean", "flatten"]
    eta: Optional[float]  # the workspace step; null: by the loss (emotion.models.joint.cocoer)
    workspace: bool
    pseudo_label_threshold: float = Fraction
    vocab_level: Level  # the window the vocabulary encoder embeds for the pseudo label

    @model_validator(mode="after")
    def _every_level(self) -> "CocoERConfig":
        if isinstance(self.backbone, dict):
            missing = [m for m in LEVELS if m not in self.backbone]
            if missing:
                raise ValueError(f"cocoer 'backbone' mapping lacks levels {missing}")
        return self


class CocoERSettings(CocoERConfig, _JobKeys):
    name: Literal["cocoer"]
    config_class: ClassVar[type[_Strict]] = CocoERConfig


# -- dsct: single stage (people and their emotions in one pass) --------------------------
class DSCTConfig(_Strict):
    labels: Optional[list[str]]
    multi_label: bool
    backbone: str
    backbone_weights: Optional[str]
    pretrained: bool
    frozen_bn: Optional[bool]  # backbone BatchNorm in eval mode while training; null: as pretrained
    input_size: int = Field(ge=32)
    hidden_dim: int = Field(ge=1)
    nheads: int = Field(ge=1)
    ffn_dim: int = Field(ge=1)
    enc_layers: int = Field(ge=0)
    dec_layers: int = Field(ge=1)
    fuse_from_layer: int  # decoder layers before it keep subject and context queries apart
    num_subject_queries: int = Field(ge=1)
    num_context_queries: int = Field(ge=1)
    relations: list[Relation]
    dropout: float = Fraction

    @model_validator(mode="after")
    def _consistent(self) -> "DSCTConfig":
        if self.hidden_dim % self.nheads or self.hidden_dim % 4:
            raise ValueError(f"dsct hidden_dim ({self.hidden_dim}) must be a multiple of nheads ({self.nheads}) and 4")
        if not 0 <= self.fuse_from_layer <= self.dec_layers:
            raise ValueError(f"dsct fuse_from_layer must be in [0, dec_layers={self.dec_layers}] "
                             f"(dec_layers: no fused layer), got {self.fuse_from_layer}")
        return self


class DSCTSettings(DSCTConfig, _JobKeys):
    name: Literal["dsct"]
    score_threshold: float = Fraction  # the least person score a found person needs
    config_class: ClassVar[type[_Strict]] = DSCTConfig


# -- face_ensemble: the mean of several face models' scores ------------------------------
class EnsembleMember(_Strict):
    name: str  # the member's model family (a registered name)
    config: dict[str, Any]  # its network config, as its checkpoint saved it


class FaceEnsembleConfig(_Strict):
    # The members (at least two); null in the YAML: an ensemble checkpoint brings them.
    members: Optional[list[EnsembleMember]] = Field(min_length=2)
    labels: Optional[list[str]]  # the members' labels, in score order (the checkpoint brings them)


class FaceEnsembleSettings(FaceEnsembleConfig, _JobKeys):
    name: Literal["face_ensemble"]
    config_class: ClassVar[type[_Strict]] = FaceEnsembleConfig


ModelSettings = Annotated[Union[FerSettings, FaceCNNSettings, QCSSettings, CocoERSettings, DSCTSettings,
                                FaceEnsembleSettings], Field(discriminator="name")]

# Family name -> its settings class (``config_class``: its network's).
MODEL_SETTINGS: dict[str, type[_JobKeys]] = {
    "fer": FerSettings, "face_cnn": FaceCNNSettings, "qcs": QCSSettings, "cocoer": CocoERSettings,
    "dsct": DSCTSettings, "face_ensemble": FaceEnsembleSettings,
}


def settings_class(name: str) -> type[_JobKeys]:
    try:
        return MODEL_SETTINGS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; model families: {sorted(MODEL_SETTINGS)}") from None


def yaml_settings(name: str) -> dict[str, Any]:
    """The ``model`` group of family ``name`` as ``jobs/configs/model/<name>.yaml`` holds it."""
    return group_option("model", name)


def yaml_config(name: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Family ``name``'s network config as its YAML sets it, with the keys of ``given`` on
    top (a checkpoint's saved config, a test's sizes)."""
    config_keys = settings_class(name).config_class.model_fields
    defaults = {key: value for key, value in yaml_settings(name).items() if key in config_keys}
    return {**defaults, **plain_config(dict(given or {}))}


def network_config(model: Mapping[str, Any]) -> dict[str, Any]:
    """A ``model`` config (``name`` included) without the keys of the job: the mapping
    ``build_model(name, cfg)`` and the spec functions take."""
    settings = settings_class(str(model["name"]))
    job_keys = set(settings.model_fields) - set(settings.config_class.model_fields)
    return {key: value for key, value in model.items() if key not in job_keys}
