"""The class prior of a mixture of datasets' training images, as ``emotion train`` sees
them: each source's labels in the job's label space, repeated by its sampling weight,
summed (soft targets count fractionally, a class a source lacks counts nothing).

    .venv/bin/python benchmarks/mixture_prior.py experiment=face_v2 data.root=../shared/data \\
        --out benchmarks/results/face_v2/class_prior.json

Prints and writes the list (in the job's label order) that a QCS model's post-hoc prior
correction (``class_prior``, ``prior_correction``) reads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"


def mixture_prior(cfg: dict) -> tuple[list[str], list[float]]:
    """The label set and class prior of the train config ``cfg``'s mixture (``data.sources``)."""
    from emotion.data.mixture import repeat_plan, source_samples
    from emotion.labels import get_label_set
    from emotion.settings import SourcesData, parse_train_settings

    data = parse_train_settings(cfg).data
    if not isinstance(data, SourcesData):
        raise SystemExit(f"data.format={data.format!r}: the class prior is of a mixture (data=faces)")
    labels = list(get_label_set(data.label_set))
    totals = np.zeros(len(labels))
    for number, (name, source) in enumerate(data.sources.items()):
        if not source.trained:
            continue
        rows = np.concatenate([s["labels"] for s in source_samples(name, source, labels)["train"]])
        rows = rows / np.nansum(rows, axis=1, keepdims=True)
        totals += np.nansum(rows[repeat_plan(len(rows), source.weight, number)], axis=0)
    return labels, (totals / totals.sum()).round(6).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="train config overrides, e.g. experiment=face_v2 data.root=PATH")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=args.overrides)
    labels, prior = mixture_prior(OmegaConf.to_container(cfg, resolve=True))
    print(json.dumps(dict(zip(labels, prior))))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(prior))


if __name__ == "__main__":
    main()
