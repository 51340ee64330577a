"""Class names of different datasets line up through the one synonym table."""

from __future__ import annotations

from emotion.labels import FERPLUS_CLASSES, canonical_name, remap


def test_the_spellings_of_common_face_sets_map_onto_fer_plus_classes():
    # KDEF's, CK+'s and other class-folder spellings, in no particular order.
    folders = ["afraid", "Angry", "contemptuous", "disgusted", "happy", "Neutral", "sad", "surprised", "scared"]
    assert (remap(folders, list(FERPLUS_CLASSES)) >= 0).all()
    assert [canonical_name(name) for name in ("afraid", "scared", "fearful")] == ["fear"] * 3


def test_a_name_without_a_synonym_stays_itself_and_matches_nothing_else():
    assert canonical_name(" Calm ") == "calm"
    assert remap(["calm"], list(FERPLUS_CLASSES)).tolist() == [-1]
