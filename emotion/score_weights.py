"""Score weights: a single-label model's scores under another label prior.

A model's softmax scores are a posterior under the class frequencies of its training
labels. Datasets label the same kind of face differently: FER+'s ten annotators call
neutral much of what FER2013's, ExpW's or a posed set's labels call an expression. For
labels that use class c w_c times as often, Bayes' rule multiplies each class's
probability by w_c and renormalises (Saerens, Latinne and Decaestecker, "Adjusting the
outputs of a classifier to new a priori probabilities", Neural Computation 2002).

``predictor.score_weights`` (``{class name: weight}``, classes left out keep weight 1)
is applied by the predictor that tagging, serving and eval share, so every path gives the
same records; it is part of an output's recipe, so rows weighted one way are never mixed
with rows weighted another.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from emotion.labels import canonical_name


def weight_vector(weights: Mapping[str, float] | None, labels: Sequence[str], *, multi_label: bool = False,
                  key: str = "predictor.score_weights") -> np.ndarray | None:
    """``{class name: weight}`` -> float64 [K] in ``labels``' order (1 where not named);
    None when ``weights`` is None or empty. Names match as ``emotion.labels`` matches them
    (``happy`` is ``happiness``). ``ValueError`` naming ``key`` for a name that is not one
    of ``labels`` (the message lists them) and for a multi-label model, whose scores are
    not one distribution to renormalise."""
    if not weights:
        return None
    if multi_label:
        raise ValueError(f"{key}: the model scores each category on its own (multi-label); weights renormalise "
                         "single-label scores only")
    index = {canonical_name(label): i for i, label in enumerate(labels)}
    vector = np.ones(len(labels), dtype=np.float64)
    named: dict[int, str] = {}
    for name, weight in weights.items():
        if canonical_name(name) not in index:
            raise ValueError(f"{key}.{name}: not a class of the model; its classes: {list(labels)}")
        if not weight > 0:
            raise ValueError(f"{key}.{name}={weight}: a weight must be > 0")
        position = index[canonical_name(name)]
        if position in named:
            raise ValueError(f"{key}: {named[position]!r} and {name!r} name the same class ({labels[position]})")
        named[position] = name
        vector[position] = float(weight)
    return vector


def weighted_scores(scores: np.ndarray, vector: np.ndarray | None) -> np.ndarray:
    """Probabilities [N, K] (rows summing to 1) -> each row times ``vector`` [K],
    renormalised to sum 1, float32; ``scores`` unchanged when ``vector`` is None."""
    if vector is None:
        return scores
    weighted = np.asarray(scores, dtype=np.float64) * vector
    return (weighted / weighted.sum(axis=-1, keepdims=True)).astype(np.float32)
