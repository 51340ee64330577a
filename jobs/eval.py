"""Evaluation job: ``emotion eval model=fer data=image_folder data.root=PATH``.

Prints one JSON line: ``accuracy`` and ``per_class`` for single-label sets, ``mAP`` and
``per_class_ap`` for multi-label ones, ``vad_mae`` when the model predicts VAD; the
report and the scoring loop are the ones validation uses during training
(``emotion.metrics.evaluation_report``, ``emotion.metrics.score_batches``).

* ``data=image_folder``: class folders, scored through the predictor (detector included);
* any other format (``data=synthetic``, ``data=prepared``, ...): the split's annotated
  people, cropped from their boxes (``data.split``, else the config's ``test_split``);
* a model that finds people itself (``model=dsct``), or ``protocol=scenes`` with any model:
  whole images through the predictor, each annotated person matched to the predicted box
  with the highest IoU (the DSCT protocol), plus the boxes' ``ap50``;
* ``model.checkpoint=PATH`` evaluates a trained checkpoint (``emotion train``);
* ``confusion_png=PATH`` also writes the confusion matrix plot (single-label sets).
"""

from __future__ import annotations

import json
import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from emotion import storage
from emotion.allocator import retain_freed_memory
from emotion.evaluation import evaluate_dataset, evaluate_image_folder, evaluate_scenes, plot_confusion
from emotion.models.loading import build_emotion_model, input_spec
from emotion.models.protocol import model_id
from emotion.predictor import build_predictor
from emotion.preflight import check_score_weights
from emotion.score_weights import weight_vector
from emotion.settings import EvalSettings, SourcesData, parse_eval_settings
from jobs.user_errors import exit_on_user_error

log = logging.getLogger("emotion.eval")


def run(cfg: DictConfig) -> dict:
    settings = parse_eval_settings(OmegaConf.to_container(cfg, resolve=True))  # once: a bad key stops here
    check_score_weights(settings)
    data = settings.data
    if isinstance(data, SourcesData):
        raise ValueError("data=faces mixes datasets for training: evaluate one dataset at a time (data=<format>)")
    if data.format == "image_folder":
        predictor = build_predictor(settings)
        model = predictor.model
        report = evaluate_image_folder(predictor, data.root, data.split, settings.batch_size, settings.limit_per_class)
    else:
        split = data.split or data.test_split or data.val_split
        if not split:
            raise ValueError(f"data.format={data.format!r}: say which split to evaluate with data.split=NAME")
        spec = input_spec(settings.model.model_dump())
        if settings.protocol == "scenes" or spec.finds_people:
            if spec.finds_people:  # as validation during training: every query is a candidate
                every_query = settings.model.model_copy(update={"score_threshold": 0.0})
                settings = settings.model_copy(update={"model": every_query})
            elif settings.detector.name == "full_frame":
                raise ValueError("protocol=scenes finds the people in whole images: it needs a detector "
                                 "(detector=retinaface), not detector=full_frame")
            predictor = build_predictor(settings, spec=spec)
            report = evaluate_scenes(predictor, data, str(split), batch_size=settings.batch_size,
                                     limit=settings.limit, levels=True)
            report["model"] = predictor.spec.model_id
            return _finish(settings, report, predictor.spec.labels)
        retain_freed_memory()  # batches run in this process (emotion/allocator.py)
        model = build_emotion_model(settings.model.model_dump())
        weights = weight_vector(settings.predictor.score_weights, model.labels, multi_label=model.multi_label)
        report = evaluate_dataset(model, data, str(split), max_side=settings.predictor.max_image_side,
                                  batch_size=settings.batch_size, limit=settings.limit, score_weights=weights)
    report["model"] = model_id(model.name, model.checkpoint_hash)
    return _finish(settings, report, model.labels)


def _finish(settings: EvalSettings, report: dict, labels) -> dict:
    """Write the confusion plot and the JSON the settings ask for; print one JSON line.
    Score weights, where set, are part of the report: they change what the model's
    numbers mean."""
    if settings.predictor.score_weights:
        report["score_weights"] = dict(settings.predictor.score_weights)
    if settings.confusion_png and "confusion" in report:
        name = report["model"].split("@")[0]
        title = f"{name}: {settings.data.root.rstrip('/').split('/')[-1]}"
        storage.write_bytes(settings.confusion_png, plot_confusion(report["confusion"], list(labels), title=title))
    line = json.dumps({k: v for k, v in report.items() if k != "confusion"})
    print(line, flush=True)
    if settings.output_json:
        storage.write_bytes(settings.output_json, json.dumps(report, indent=2).encode())
    return report


@hydra.main(config_path="configs", config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error(log, errors=(FileNotFoundError, ValueError)):
        run(cfg)


if __name__ == "__main__":
    main()
