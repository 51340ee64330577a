"""A worker's model loading runs with the cyclic collector paused and freezes what it loaded."""

import gc

import pytest

from emotion.pipelines.worker_startup import loading_models

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _restore_gc():
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # back to the test process's normal collection
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_collector_is_paused_while_loading_then_resumed_with_the_loaded_objects_frozen():
    gc.enable()
    gc.unfreeze()
    with loading_models():
        assert not gc.isenabled()
        loaded = [{"weight": i} for i in range(1000)]  # stands in for modules and models
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(loaded)


def test_a_failed_load_resumes_collection_and_freezes_nothing():
    gc.enable()
    gc.unfreeze()
    with pytest.raises(RuntimeError, match="no weights"):
        with loading_models():
            raise RuntimeError("no weights")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_process_with_collection_off_keeps_it_off():
    gc.disable()
    with loading_models():
        pass
    assert not gc.isenabled()
