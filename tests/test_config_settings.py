"""The typed config: each model and data YAML holds exactly the keys its class declares,
every config group option validates in every job that has the group, a checkpoint's
saved model config validates once its family's YAML fills the keys it lacks, and a
misspelt key in any group stops every job, before Ray starts, with one line naming it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any, get_args

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from pydantic import BaseModel

from emotion.models.registry import MODEL_MODULES
from emotion.models.settings import MODEL_SETTINGS, QCSConfig, yaml_settings
from emotion.pipelines.serving.settings import ServeJobSettings
from emotion.settings import (ConfigError, DataSettings, parse_eval_settings, parse_settings, parse_tag_settings,
                              parse_train_settings)
from tests.conftest import PROJECT_ROOT

CONFIG_DIR = PROJECT_ROOT / "jobs" / "configs"
JOBS = ("tag", "eval", "train", "serve")
# Values a job cannot run without, which its YAML leaves to the command line.
REQUIRED = {"eval": ["data.root=/data"], "train": ["data.root=/data"]}


def compose_job(job: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=job, overrides=[*REQUIRED.get(job, []), *overrides])


def validate_serve(plain: dict) -> None:
    parse_settings(ServeJobSettings, plain)


VALIDATE = {"tag": parse_tag_settings, "eval": parse_eval_settings, "train": parse_train_settings,
            "serve": validate_serve}


def job_groups(job: str) -> list[str]:
    """The config groups a job's defaults list names (``debug`` holds tagging's smoke-test
    sizes; experiments are training's and are checked by tests/test_training.py)."""
    defaults = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{job}.yaml"))["defaults"]
    groups = [next(iter(entry)) for entry in defaults if isinstance(entry, dict)]
    return [g for g in groups if not g.startswith("override") and g not in ("experiment", "debug")]


def group_options() -> list[tuple[str, str, str]]:
    cases = [(job, group, path.stem) for job in JOBS for group in job_groups(job)
             for path in sorted((CONFIG_DIR / group).glob("*.yaml"))]
    return cases + [("tag", "debug", "default")]


@pytest.mark.parametrize("job,group,option", group_options())
def test_every_group_option_composes_and_validates_in_every_job_that_has_the_group(job, group, option):
    cfg = compose_job(job, f"{group}={option}")
    VALIDATE[job](OmegaConf.to_container(cfg, resolve=True))


# -- model: one class per family, every key in its YAML -----------------------------------
def test_each_model_family_has_a_settings_class_and_a_yaml():
    assert set(MODEL_SETTINGS) == set(MODEL_MODULES) == {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")}


def assert_yaml_matches(data: dict, cls: type[BaseModel], where: str) -> None:
    """``data`` (one YAML's keys) holds every key ``cls`` declares and no other; ``cls``
    gives none a default (the YAML holds them); nested settings likewise."""
    declared = set(cls.model_fields)
    assert not declared - set(data), f"{where}: declared by {cls.__name__}, missing from the YAML"
    assert not set(data) - declared, f"{where}: in the YAML, not declared by {cls.__name__}"
    defaulted = [name for name, field in cls.model_fields.items() if not field.is_required()]
    assert not defaulted, f"{where}: {cls.__name__} gives defaults to {defaulted}"
    for name, field in cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            assert_yaml_matches(data[name], field.annotation, f"{where}.{name}")


@pytest.mark.parametrize("name", sorted(MODEL_SETTINGS))
def test_each_model_yaml_holds_every_key_its_family_accepts(name):
    settings = MODEL_SETTINGS[name]
    yaml = yaml_settings(name)
    assert_yaml_matches(yaml, settings, f"model/{name}.yaml")
    assert_yaml_matches({k: v for k, v in yaml.items() if k in settings.config_class.model_fields},
                        settings.config_class, f"model/{name}.yaml (network keys)")
    settings.model_validate(yaml)


# -- data: one class per format ------------------------------------------------------------
DATA_CLASSES: dict[str, type[BaseModel]] = {
    get_args(cls.model_fields["format"].annotation)[0]: cls for cls in get_args(get_args(DataSettings)[0])}


def test_each_data_format_class_has_a_yaml():
    formats = {OmegaConf.load(path)["format"] for path in (CONFIG_DIR / "data").glob("*.yaml")}
    assert formats == set(DATA_CLASSES)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml")))
def test_each_data_yaml_holds_every_key_its_format_accepts(option):
    data = OmegaConf.to_container(compose_job("train", f"data={option}").data, resolve=True)
    cls = DATA_CLASSES[data["format"]]
    assert_yaml_matches(data, cls, f"data/{option}.yaml")
    cls.model_validate(data)


def test_a_mixture_source_is_a_dataset_config_with_a_weight():
    sources = OmegaConf.to_container(compose_job("train", "data=faces").data, resolve=True)["sources"]
    source_class = DATA_CLASSES["sources"].model_fields["sources"].annotation.__args__[1]
    for name, source in sources.items():
        assert_yaml_matches(source, source_class, f"data/faces.yaml: sources.{name}")
    with pytest.raises(ConfigError, match=r"data\.sources\.expw\.wieght: unknown key"):
        parse_train_settings(OmegaConf.to_container(compose_job("train", "data=faces", "+data.sources.expw.wieght=1"),
                                                    resolve=True))


# -- checkpoints -----------------------------------------------------------------------
def test_the_shipped_checkpoint_loads_with_the_keys_it_lacks_from_the_yaml():
    from emotion.checkpoint import load_checkpoint
    from emotion.models.loading import input_spec, load_model_from_checkpoint, saved_config

    ckpt = load_checkpoint("qcs_ferplus")
    saved = ckpt["model_cfg"]
    assert not set(saved) - set(QCSConfig.model_fields)  # every saved key is declared
    lacking = set(QCSConfig.model_fields) - set(saved)
    whole = saved_config(ckpt)
    QCSConfig.model_validate(whole)
    assert {key: whole[key] for key in lacking} == {key: yaml_settings("qcs")[key] for key in lacking}
    model = load_model_from_checkpoint("qcs_ferplus")
    assert model.config["test_flip"] is True  # the checkpoint's own value wins over the YAML's
    assert set(model.config) == set(QCSConfig.model_fields)  # what it saves again is whole
    spec = input_spec(yaml_settings("qcs"))
    assert spec.input_size == 80 and len(spec.labels) == 8 and spec.model_id == f"qcs@sha256:{ckpt['sha256'][:16]}"


def test_a_checkpoint_lacking_a_key_takes_the_yaml_value(tmp_path):
    import torch

    from emotion.checkpoint import save_checkpoint
    from emotion.models.face.qcs import QCSNet
    from emotion.models.loading import load_model_from_checkpoint
    from emotion.models.settings import yaml_config

    torch.manual_seed(0)
    model = QCSNet(yaml_config("qcs", {"labels": ["a", "b"], "backbone": "toy", "pretrained": False, "input_size": 32,
                                       "embed_dim": 16}))
    written = {k: v for k, v in model.config.items() if k not in ("equalize", "class_prior", "prior_correction")}
    path = save_checkpoint(tmp_path / "q.ckpt", model_name="qcs", model_cfg=written, state_dict=model.state_dict(),
                           labels=["a", "b"])
    loaded = load_model_from_checkpoint(path)
    qcs = yaml_settings("qcs")
    assert [loaded.config[k] for k in ("equalize", "class_prior", "prior_correction")] == [
        qcs["equalize"], qcs["class_prior"], qcs["prior_correction"]]
    unknown = save_checkpoint(tmp_path / "u.ckpt", model_name="qcs", model_cfg={**model.config, "bogus_key": 1},
                              state_dict=model.state_dict(), labels=["a", "b"])
    with pytest.raises(ValueError, match=r"model\.bogus_key: unknown key"):
        load_model_from_checkpoint(unknown)


# -- misspelt keys: every job stops before Ray with one line ---------------------------------
MISSPELT = [
    *[(job, "+model.bogus_key=1", "model.bogus_key: unknown key") for job in JOBS],
    *[(job, "+model.input_siez=64", "model.input_siez: unknown key") for job in ("eval", "train")],
    *[(job, "+detector.scroe_threshold=0.5", "detector.scroe_threshold: unknown key")
      for job in ("tag", "eval", "serve")],
    ("eval", "+detector.finder.scroe_threshold=0.5", "detector.finder.scroe_threshold: unknown key"),
    ("tag", "detector=full_frame detector.find_face=maybe", "detector.find_face='maybe': Input should be"),
    *[(job, "+predictor.treshold=0.5", "predictor.treshold: unknown key") for job in JOBS],
    *[(job, "+data.bogus_key=1", "data.bogus_key: unknown key") for job in ("eval", "train")],
    *[(job, "+data.options.bogus_key=1", "data.options.bogus_key: unknown key") for job in ("eval", "train")],
    ("tag", "+stages.detect.bogus_key=1", "stages.detect.bogus_key: unknown key"),
    ("serve", "+serve.bogus_key=1", "serve.bogus_key: unknown key"),
    *[(job, "+ray.bogus_key=1", "ray.bogus_key: unknown key") for job in ("tag", "train", "serve")],
    ("train", "+scaling.bogus_key=1", "scaling.bogus_key: unknown key"),
    ("train", "+train.bogus_key=1", "train.bogus_key: unknown key"),
    ("train", "+train.augment.hue=0.1", "train.augment.hue: unknown key"),
    *[(job, "+bogus_key=1", "bogus_key: unknown key") for job in ("tag", "eval", "serve")],
    ("train", "+bogus_key=1", "bogus_key: unknown key"),
    # A bad value of a family's key, and a family that does not exist.
    ("eval", "model=qcs model.input_size=8", "model.input_size=8: Input should be greater than or equal to 32"),
    ("train", "model=dsct model.fuse_from_layer=9", "dsct fuse_from_layer must be in [0, dec_layers=4]"),
    ("tag", "model.name=nosuch", "model.name='nosuch': not one of"),
    ("eval", "data=ferplus data.mode=majorty", "data.mode='majorty': Input should be"),
    # A score weight for a class the model does not have, or not above zero.
    *[(job, "predictor.score_weights={calm:0.5}", "predictor.score_weights.calm: not a class of the model")
      for job in ("tag", "eval", "serve")],
    ("tag", "predictor.score_weights={neutral:0}", "predictor.score_weights.neutral=0: Input should be greater"),
    ("train", "predictor.score_weights={neutral:0.6}", "predictor: score_weights apply at inference"),
]


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray (or finding it started) fails the test: the check must come first."""
    import ray

    def started(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started before the config was checked")

    monkeypatch.setattr(ray, "init", started)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)


@pytest.mark.parametrize("job,override,message", MISSPELT)
def test_a_config_mistake_stops_the_job_before_ray_with_one_line_naming_it(job, override, message, no_ray,
                                                                            tmp_path, monkeypatch):
    import importlib

    monkeypatch.chdir(tmp_path)  # nothing a job might write lands in the repository
    cfg = compose_job(job, *override.split())
    with pytest.raises(ConfigError) as raised:
        importlib.import_module(f"jobs.{job}").run(cfg)
    text = str(raised.value)
    assert message in text and "\n" not in text, text


@pytest.mark.integration
def test_the_cli_exits_2_with_one_line_naming_an_unknown_model_key(tmp_path):
    """The one CLI wiring test: the in-process checks above reach the command line."""
    result = subprocess.run([sys.executable, "-m", "emotion.cli", "eval", "+model.bogus_key=1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    text = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, text
    assert len(text.splitlines()) == 1 and "model.bogus_key: unknown key" in text, text
