"""Weight files: every known file resolves offline and matches its SHA-256; files shipped
inside this package (``res://``) resolve from the installed (or editable) package."""

from __future__ import annotations

import pytest

from emotion.weights import WeightsHashMismatchError, WeightsNotFoundError, WeightSpec, resolve, sha256_of

pytestmark = pytest.mark.unit


def test_a_file_inside_the_package_resolves_and_is_hash_checked():
    spec = WeightSpec("res://jobs/configs/tag.yaml", None)
    path = resolve(spec)
    assert path.name == "tag.yaml" and path.is_file()
    assert resolve(WeightSpec(spec.uri, sha256_of(path))) == path
    with pytest.raises(WeightsHashMismatchError, match="SHA-256"):
        resolve(WeightSpec(spec.uri, "0" * 64))


def test_a_missing_package_file_says_what_to_do():
    with pytest.raises(WeightsNotFoundError, match="missing from the installed package"):
        resolve(WeightSpec("res://emotion/assets/not_there.ckpt", None))
    with pytest.raises(WeightsNotFoundError, match="no module"):
        resolve(WeightSpec("res://no_such_module_here/file.ckpt", None))
