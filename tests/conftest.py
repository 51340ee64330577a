"""Shared fixtures: a real local Ray, real photos, and folders of awkward images; and the
tests' tiers (``unit``, ``integration``, ``cluster``: pyproject.toml's markers)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# Ray Train's controller polls its workers every 2 s by default, and a run waits for polls
# to see each reported epoch and the end: a tiny test run spent most of its time there.
# Every Ray these tests start (in-process, `ray start` nodes, job subprocesses) inherits it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def fer2013_root() -> Path | None:
    from emotion.tagging.samples import fer2013_root as find

    return find()


@pytest.fixture(scope="session")
def fer_root() -> Path:
    root = fer2013_root()
    if root is None:
        pytest.skip("FER2013 not found (../shared/data/fer2013 or $EMOTION_FER2013)")
    return root


@pytest.fixture(scope="session")
def sample_photos() -> dict[str, Path]:
    from emotion.weights import SAMPLE_PHOTOS, WeightsNotFoundError, resolve

    try:
        return {name: resolve(spec) for name, spec in SAMPLE_PHOTOS.items()}
    except WeightsNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def jpeg_bytes(pixels: np.ndarray, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", **save_kwargs)
    return buffer.getvalue()


def write_awkward_images(folder: Path, photo: Path) -> dict[str, str | None]:
    """Write images of every awkward kind; returns name -> expected error substring (None = decodes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    img = Image.fromarray(rgb)
    expected: dict[str, str | None] = {}

    img.convert("L").save(folder / "gray.png"); expected["gray.png"] = None
    img.convert("P", palette=Image.ADAPTIVE).save(folder / "palette.png"); expected["palette.png"] = None
    img.convert("CMYK").save(folder / "cmyk.jpg"); expected["cmyk.jpg"] = None
    rgba = img.convert("RGBA"); rgba.putalpha(128); rgba.save(folder / "alpha.png"); expected["alpha.png"] = None
    sixteen = (np.asarray(img.convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(sixteen).save(folder / "gray16.png"); expected["gray16.png"] = None
    # EXIF orientation 6: stored rotated, viewers turn it upright.
    exif = Image.Exif(); exif[0x0112] = 6
    img.transpose(Image.ROTATE_90).save(folder / "rotated_exif.jpg", exif=exif.tobytes()); expected["rotated_exif.jpg"] = None
    data = (folder / "gray.png").read_bytes()
    whole = jpeg_bytes(rgb)
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2]); expected["truncated.jpg"] = "truncated"
    (folder / "not_an_image.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10); expected["not_an_image.jpg"] = "not an image"
    (folder / "empty.png").write_bytes(b""); expected["empty.png"] = "empty"
    del data
    return expected


@pytest.fixture(scope="session")
def poison_exif_jpeg(sample_photos) -> bytes:
    """A real JPEG whose EXIF block makes Pillow's ``exif_transpose`` raise something other
    than OSError/ValueError (struct.error, TypeError, ...): the first such seeded mutation."""
    from PIL import ImageOps

    from tests.fuzz_images import base_images, mutate

    base = base_images(sample_photos["obama"])["JPEG"]
    for seed in range(5000):
        m = mutate(base, "JPEG", seed)
        if m.kind != "exif":
            continue
        try:
            img = Image.open(io.BytesIO(m.data))
            img.load()
        except Exception:  # noqa: BLE001 - want mutations whose pixels are intact
            continue
        try:
            ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError):
            continue
        except Exception:  # noqa: BLE001 - found one
            return m.data
    pytest.skip("this Pillow survives every EXIF mutation tried: no poison JPEG to test with")


# CUDA-only checks; `gpu`-marked as well, so the default run (-m "not gpu") deselects them.
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def one_torch_thread():
    """torch at one thread for the test (timings and results as on a 1-thread actor)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- tiers ---------------------------------------------------------------------------------
TIERS = ("unit", "integration", "cluster")
# A test that asks for one of these runs against a real Ray or the S3 test server.
INTEGRATION_FIXTURES = frozenset({"ray_local", "s3_server", "s3_endpoint", "s3_bucket", "two_node_ray"})


def pytest_collection_modifyitems(config, items):
    """Every test gets a tier. A module marks its tier with ``pytestmark``; in a module
    that holds both, a test asking for a Ray or S3 fixture is ``integration`` and any
    other test is ``unit`` unless marked itself (one that runs Ray in a subprocess). A
    ``unit`` test never asks for those fixtures and carries no other tier."""
    for item in items:
        tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
        integrated = INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ()))
        if not tiers:
            item.add_marker("integration" if integrated else "unit")
        elif "unit" in tiers and (integrated or len(tiers) > 1):
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(integrated) or sorted(tiers)}")
