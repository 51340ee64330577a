"""Continuous batching (``ContinuousBatcher``) on a plain asyncio loop: no Ray, no model."""

from __future__ import annotations

import asyncio

import pytest

from emotion.pipelines.serving.batching import ContinuousBatcher
from emotion.pipelines.serving.telemetry import server_timing

pytestmark = pytest.mark.unit


class SlowModel:
    """Answers each item with itself after ``seconds`` per batch; records the batches."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[list] = []

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        return [f"answer-{item}" for item in items]


def run(coro):
    return asyncio.run(coro)


def test_a_lone_request_runs_at_once_whatever_the_wait():
    async def main():
        model = SlowModel(0.0)
        batcher = ContinuousBatcher(model, max_batch_size=32, wait_s=5.0)
        results = [await batcher.submit(i) for i in range(3)]  # one client, one request at a time
        await batcher.close()
        return model, results

    model, results = run(main())
    assert model.batches == [[0], [1], [2]]
    assert [r.value for r in results] == ["answer-0", "answer-1", "answer-2"]
    # A 5 s wait would show here: an idle batcher never waits for company.
    assert all(r.queue_s < 0.05 and r.batch_size == 1 for r in results)


def test_requests_that_arrive_while_a_batch_runs_form_the_next_batch():
    async def main(max_batch_size: int):
        model = SlowModel(0.05)
        batcher = ContinuousBatcher(model, max_batch_size=max_batch_size, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)  # "a" runs alone; the next ten arrive while it runs
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return model, results

    model, results = run(main(16))
    assert model.batches == [["a"], list(range(10))]
    assert [r.batch_size for r in results] == [1] + [10] * 10
    assert results[0].queue_s < 0.01 and min(r.queue_s for r in results[1:]) > 0.02  # they waited for "a"

    model, _ = run(main(4))
    assert [len(b) for b in model.batches] == [1, 4, 4, 2]  # never more than max_batch_size


def test_under_load_a_batch_waits_to_fill_only_up_to_the_bound():
    async def main():
        model = SlowModel(0.05)
        batcher = ContinuousBatcher(model, max_batch_size=8, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit("b"))  # queued while "a" runs: load
        await asyncio.sleep(0.07)  # "a" done; "b" waits up to 0.2 s for company
        third = asyncio.ensure_future(batcher.submit("c"))
        results = await asyncio.gather(first, second, third)
        loop = asyncio.get_running_loop()
        start = loop.time()
        alone = await batcher.submit("d")  # idle again: runs at once despite wait_s
        took = loop.time() - start
        await batcher.close()
        return model, results, alone, took

    model, results, alone, took = run(main())
    assert model.batches == [["a"], ["b", "c"], ["d"]]
    assert alone.queue_s < 0.05 and took < 0.15


def test_a_failing_batch_fails_its_callers_only():
    async def main():
        calls = []

        async def flaky(items: list) -> list:
            calls.append(list(items))
            if "bad" in items:
                raise ValueError("model failed")
            return items

        batcher = ContinuousBatcher(flaky, max_batch_size=4, wait_s=0.0)
        with pytest.raises(ValueError, match="model failed"):
            await batcher.submit("bad")
        ok = await batcher.submit("good")
        await batcher.close()
        return calls, ok

    calls, ok = run(main())
    assert calls == [["bad"], ["good"]] and ok.value == "good"


def test_a_caller_that_went_away_is_left_out_of_the_batch():
    async def main():
        model = SlowModel(0.05)
        batcher = ContinuousBatcher(model, max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit("a"))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.gather(first, kept)
        await batcher.close()
        return model

    assert run(main()).batches == [["a"], ["kept"]]


def test_batcher_settings_are_checked_and_server_timing_reads_as_the_header():
    async def main():
        with pytest.raises(ValueError):
            ContinuousBatcher(SlowModel(0), max_batch_size=0, wait_s=0.0)
        batcher = ContinuousBatcher(SlowModel(0), max_batch_size=2, wait_s=0.0)
        batcher.configure(8, 0.01)
        return batcher.max_batch_size, batcher.wait_s

    assert run(main()) == (8, 0.01)
    assert server_timing({"queue": 1.234, "decode": 0.5}, 3) == 'queue;dur=1.2, decode;dur=0.5, batch;desc="3"'


def test_a_failing_batch_callback_costs_no_answer():
    async def main():
        def on_batch(size: int, queued: int) -> None:
            raise RuntimeError("metrics down")

        batcher = ContinuousBatcher(SlowModel(0), max_batch_size=4, wait_s=0.0, on_batch=on_batch)
        answers = [await asyncio.wait_for(batcher.submit(item), 5) for item in "xy"]
        await batcher.close()
        return answers

    assert [a.value for a in run(main())] == ["answer-x", "answer-y"]
