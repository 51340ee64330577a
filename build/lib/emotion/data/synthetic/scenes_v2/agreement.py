"""How often each level alone is right in ``scenes_v2``: expected (closed form) and measured.

A level is *right* on a person when the category it shows equals the person's label; an
absent body or context shows no category and counts as wrong. With ``pb`` and ``pc`` the
probabilities that the body and the context are shown (clear or weak) and ``A, F, B, C,
D`` the relation probabilities (agree, face_odd, body_odd, context_odd, all_differ):

* face    = 1 - pb pc F                       (only a shown body = context outvotes it)
* body    = pb pc (A + F + C) + pb (1 - pc) (A + C)
* context = pb pc (A + F + B) + (1 - pb) pc (A + B)

``level_agreement`` measures the same fractions on generated people (the ``cue_*`` fields
written with each person, ``read_people`` reads them back from ``Annotations.mat``).
"""

from __future__ import annotations

import io
from typing import Any, Iterable, Mapping

import scipy.io

from emotion.data.emotic import _items, _person_categories, locate_emotic
from emotion.data.synthetic.scenes_v2.params import CUE_STATES, RELATIONS, ScenesV2Params

ABSENT = "none"  # what a cue field holds when the cue is absent
LEVELS: tuple[str, ...] = ("face", "body", "context")
PERSON_FIELDS: tuple[str, ...] = ("cue_face", "cue_body", "cue_context", "cue_body_state", "cue_context_state",
                                  "relation", "face_source", "visible")


def expected_level_agreement(params: ScenesV2Params | None = None) -> dict[str, float]:
    """{level: expected fraction of people on whom that level alone is right}."""
    params = params or ScenesV2Params()
    pb = 1.0 - params.body_states[CUE_STATES.index("absent")]
    pc = 1.0 - params.context_states[CUE_STATES.index("absent")]
    a, f, b, c, _ = (params.relations[RELATIONS.index(name)] for name in RELATIONS)
    return {
        "face": 1.0 - pb * pc * f,
        "body": pb * pc * (a + f + c) + pb * (1.0 - pc) * (a + c),
        "context": pb * pc * (a + f + b) + (1.0 - pb) * pc * (a + b),
    }


def level_agreement(people: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """{"people": n, level: fraction of people whose ``label`` equals ``cue_<level>``}."""
    rows = list(people)
    out: dict[str, float] = {"people": float(len(rows))}
    for level in LEVELS:
        hits = sum(1 for row in rows if row[f"cue_{level}"] != ABSENT and row[f"cue_{level}"] == row["label"])
        out[level] = hits / len(rows) if rows else float("nan")
    return out


def read_people(root: str, split: str) -> list[dict[str, Any]]:
    """One dict per person of ``split`` in a written ``scenes_v2`` dataset: ``image``,
    ``label`` (the category name) and the ``PERSON_FIELDS``."""
    data, _ = locate_emotic(str(root))
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False, chars_as_strings=True)
    rows = []
    for image in _items(mat[split]):
        for person in _items(getattr(image, "person", None)):
            (label,) = _person_categories(person)
            row = {"image": str(image.filename), "label": label}
            for name in PERSON_FIELDS:
                value = getattr(person, name)
                row[name] = float(value) if name == "visible" else str(value)
            rows.append(row)
    return rows
