from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from cropseg_inference.batching import BatcherStoppedError, BatchStats, MicroBatcher, QueueFullError
from inference_testing import MODEL

from cropseg_core.segmenter import OnnxSegmenter


@pytest.mark.slow
def test_batched_results_equal_single_results(field_bands: np.ndarray) -> None:
    segmenter = OnnxSegmenter(MODEL)
    segmenter.load()
    rng = np.random.default_rng(0)
    tiles = [np.ascontiguousarray(np.roll(field_bands, rng.integers(0, 300), axis=1)) for _ in range(6)]
    batches: list[BatchStats] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(segmenter.predict, max_batch_size=4, max_wait_s=0.05, max_queue=64,
                               on_batch=batches.append)  # fmt: skip
        batcher.start()
        results = await asyncio.gather(*(batcher.run([tile]) for tile in tiles))
        await batcher.stop()
        return [r[0].output for r in results]

    batched = asyncio.run(main())
    assert sorted(b.size for b in batches) == [2, 4]  # six tiles gathered within the wait
    for tile, output in zip(tiles, batched, strict=True):
        single = segmenter.predict(tile)
        assert np.abs(output - single).max() < 1e-5
        assert np.array_equal(output > 0.55, single > 0.55)


def recording_model(calls: list[tuple[int, ...]], gate: threading.Event | None = None):  # type: ignore[no-untyped-def]
    def run(batch: np.ndarray) -> np.ndarray:
        if gate is not None:
            gate.wait(5)
        calls.append(batch.shape)
        return batch.sum(axis=-1).astype(np.float32)

    return run


def test_only_tiles_of_one_shape_share_a_batch() -> None:
    calls: list[tuple[int, ...]] = []

    async def main() -> None:
        batcher = MicroBatcher(recording_model(calls), max_batch_size=8, max_wait_s=0.02, max_queue=64)
        batcher.start()
        small, large = np.ones((2, 3, 3), np.uint8), np.ones((4, 5, 3), np.uint8)
        results = await asyncio.gather(batcher.run([small, large, small]), batcher.run([large]))
        assert results[0][0].output.shape == (2, 3)
        assert results[0][1].output.shape == (4, 5)
        await batcher.stop()

    asyncio.run(main())
    assert sorted(calls) == [(2, 2, 3, 3), (2, 4, 5, 3)]


def test_full_queue_refuses_at_once_and_stop_drains() -> None:
    calls: list[tuple[int, ...]] = []
    gate = threading.Event()

    async def main() -> None:
        batcher = MicroBatcher(
            recording_model(calls, gate), max_batch_size=1, max_wait_s=0, max_queue=2, max_chunk=2
        )
        batcher.start()
        tile = np.zeros((2, 2, 3), np.uint8)
        first = asyncio.ensure_future(batcher.run([tile]))  # taken by the worker, blocked on the gate
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.run([tile, tile]))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):
            batcher.submit([tile])
        assert batcher.depth == 2
        gate.set()
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0.01)
        with pytest.raises(BatcherStoppedError):
            batcher.submit([tile])
        await stopping
        assert first.done()
        assert len(queued.result()) == 2

    asyncio.run(main())
    assert len(calls) == 3


def test_model_errors_reach_every_request_of_the_batch() -> None:
    def broken(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime failed")

    async def main() -> None:
        batcher = MicroBatcher(broken, max_batch_size=4, max_wait_s=0.01, max_queue=8)
        batcher.start()
        outcomes = await asyncio.gather(
            batcher.run([np.zeros((2, 2, 3), np.uint8)]), batcher.run([np.zeros((2, 2, 3), np.uint8)]),
            return_exceptions=True,
        )  # fmt: skip
        assert [str(o) for o in outcomes] == ["onnxruntime failed"] * 2
        await batcher.stop()

    asyncio.run(main())


def test_cancelled_requests_are_not_run() -> None:
    calls: list[tuple[int, ...]] = []
    gate = threading.Event()

    async def main() -> None:
        batcher = MicroBatcher(recording_model(calls, gate), max_batch_size=4, max_wait_s=0, max_queue=8)
        batcher.start()
        busy = asyncio.ensure_future(batcher.run([np.zeros((1, 1, 3), np.uint8)]))
        await asyncio.sleep(0.05)
        abandoned = asyncio.ensure_future(batcher.run([np.zeros((9, 9, 3), np.uint8)]))
        await asyncio.sleep(0.01)
        abandoned.cancel()
        gate.set()
        await busy
        await batcher.stop()

    asyncio.run(main())
    assert calls == [(1, 1, 1, 3)]


def test_a_request_is_admitted_whole_or_not_at_all() -> None:
    gate = threading.Event()

    async def main() -> None:
        batcher = MicroBatcher(
            recording_model([], gate), max_batch_size=1, max_wait_s=0, max_queue=4, max_chunk=4
        )
        batcher.start()
        tile = np.zeros((2, 2, 3), np.uint8)
        busy = asyncio.ensure_future(batcher.run([tile]))  # taken by the worker, blocked on the gate
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(batcher.run([tile, tile]))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError, match="2 tiles wait, 3 more do not fit"):
            await batcher.run([tile, tile, tile])  # 2 + 3 > 4: none of it is queued
        assert batcher.depth == 2
        gate.set()
        await asyncio.gather(busy, waiting)
        await batcher.stop()

    asyncio.run(main())


def test_a_request_larger_than_the_queue_runs_in_chunks_and_small_ones_get_in_between() -> None:
    """A huge image neither is refused forever nor starves others: it holds one chunk at a time."""
    order: list[str] = []
    queued_after: list[int] = []

    def model(batch: np.ndarray) -> np.ndarray:
        order.extend("small" if tile[0, 0, 0] else "large" for tile in batch)
        time.sleep(0.002)
        return batch.sum(axis=-1).astype(np.float32)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0, max_queue=16, max_chunk=4)
        batcher.start()
        large = [np.zeros((2, 2, 3), np.uint8)] * 40  # 2.5 times the whole queue
        huge = asyncio.ensure_future(batcher.run(large))
        smalls = []
        for _ in range(5):
            await asyncio.sleep(0.01)
            queued_after.append(len(order))  # tiles run before this small one was queued
            smalls.append(asyncio.ensure_future(batcher.run([np.ones((2, 2, 3), np.uint8)])))
            assert batcher.depth <= 4 + len(smalls), "the large request holds at most one chunk"
        results = await huge
        assert len(results) == 40
        await asyncio.gather(*smalls)
        await batcher.stop()

    asyncio.run(main())
    assert order.count("small") == 5
    # Each small tile waited behind at most the large request's current chunk (4 tiles, one of
    # them maybe running) and the small ones before it, not behind all 40.
    positions = [i for i, name in enumerate(order) if name == "small"]
    waited = [position - queued for position, queued in zip(positions, queued_after, strict=True)]
    assert max(waited) <= 4 + 1 + 4, (waited, order)
    assert positions[-1] < 30, order


def test_a_new_request_is_refused_when_the_work_ahead_would_keep_it_waiting_too_long() -> None:
    """Shedding by time: 0.05 s per tile and a 0.33 s bound. Turns go round, so a new request
    waits behind one tile of each waiting request: refused with seven requests waiting, however
    few tiles each. An admitted request's later chunks still queue (it was promised an answer)."""
    gate = threading.Event()

    async def main() -> None:
        batcher = MicroBatcher(recording_model([], gate), max_batch_size=1, max_wait_s=0, max_queue=64,
                               max_chunk=4, max_queue_wait_s=0.33)  # fmt: skip
        batcher.start()
        batcher.tile_s = 0.05  # as learnt from earlier batches
        tile = np.zeros((2, 2, 3), np.uint8)
        large = asyncio.ensure_future(batcher.run([tile] * 12))  # three chunks of 4, one running
        await asyncio.sleep(0.01)
        assert batcher.expected_wait_s == pytest.approx(0.05)  # behind one tile of the large one
        small = [asyncio.ensure_future(batcher.run([tile] * 2)) for _ in range(6)]
        await asyncio.sleep(0.01)
        assert batcher.expected_wait_s == pytest.approx(0.35)  # seven requests ahead, one tile each
        with pytest.raises(
            QueueFullError, match=r"15 tiles of 7 requests wait; .* about 0\.35 s \(limit 0\.33 s\)"
        ):
            await batcher.run([tile])
        gate.set()
        assert len(await large) == 12
        assert all(len(result) == 2 for result in await asyncio.gather(*small))
        assert await batcher.run([tile]), "admitted again once the queue has drained"
        await batcher.stop()

    asyncio.run(main())


def test_requests_take_turns_at_the_model() -> None:
    """A 40-tile request and three one-tile requests that arrive while it runs: the small ones
    run within one turn (one tile of each waiting request), not after the large one's chunk."""
    order: list[int] = []
    gate = threading.Event()

    def model(batch: np.ndarray) -> np.ndarray:
        gate.wait(5)
        order.extend(int(tile[0, 0, 0]) for tile in batch)
        return batch.sum(axis=-1).astype(np.float32)

    async def main() -> None:
        batcher = MicroBatcher(model, max_batch_size=1, max_wait_s=0, max_queue=64, max_chunk=16)
        batcher.start()
        large = asyncio.ensure_future(batcher.run([np.zeros((2, 2, 3), np.uint8)] * 40))
        await asyncio.sleep(0.01)
        small = [asyncio.ensure_future(batcher.run([np.full((2, 2, 3), n, np.uint8)])) for n in (1, 2, 3)]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(large, *small)
        await batcher.stop()

    asyncio.run(main())
    # The large request's first tile was running and it had taken its next turn already; then
    # the small ones, each behind one turn of the others.
    assert order[:6] == [0, 0, 1, 2, 3, 0], order
