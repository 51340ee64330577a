"""Dataset formats, synthetic scenes and Parquet preparation (pure library, no Ray).

Every reader returns a ``SampleSet`` (label set + samples per split, each sample one
image with its labelled people in the form documented in ``emotion.data.records``).
``read_dataset(fmt, root, **kwargs)`` picks the reader by format name:

=============== =================================================== ===================
format          layout                                              reader
=============== =================================================== ===================
emotic          ``Annotations.mat`` (+ ``emotic/<folder>/<file>``)  ``read_emotic``
synthetic       what ``generate_synthetic_emotic`` writes (EMOTIC)  ``read_emotic``
emotic_csv      mat2py ``{train,val,test}.csv``                     ``read_emotic_csv``
caer            ``{train,test}/<Class>/<frame>``                    ``read_caer``
rafdb           ``EmoLabel/list_patition_label.txt`` + ``Image/``   ``read_rafdb``
image_folder    ``<split>/<class>/<image>`` (classes from folders)  ``read_image_folder``
fer             the same with the FER2013 class names               ``read_image_folder``
ferplus         ``FER2013{Train,Valid,Test}/`` + ``label.csv``       ``read_ferplus``
                votes (Microsoft's FER+ release; ``mode`` option)
=============== =================================================== ===================
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from emotion.data.caer import read_caer
from emotion.data.emotic import read_emotic, read_emotic_csv
from emotion.data.ferplus import read_ferplus
from emotion.data.image_folder import read_image_folder
from emotion.data.rafdb import read_rafdb
from emotion.data.records import SampleSet

READERS: dict[str, Callable[..., SampleSet]] = {
    "emotic": read_emotic,
    "synthetic": read_emotic,
    "emotic_csv": read_emotic_csv,
    "caer": read_caer,
    "rafdb": read_rafdb,
    "image_folder": read_image_folder,
    "fer": partial(read_image_folder, label_set="fer"),
    "ferplus": read_ferplus,
}


def list_formats() -> list[str]:
    return sorted(READERS)


def read_dataset(fmt: str, root: str, **kwargs: Any) -> SampleSet:
    """Read a dataset of format ``fmt`` (see the table above); ``kwargs`` go to the reader."""
    try:
        reader = READERS[fmt]
    except KeyError:
        raise ValueError(f"unknown dataset format {fmt!r}; known: {list_formats()}") from None
    return reader(str(root), **kwargs)


__all__ = ["READERS", "SampleSet", "list_formats", "read_dataset"]
