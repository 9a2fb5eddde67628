"""Adaptive batching: keys, merge and split, and the Batcher driven by a fake async model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from shoal.serving.batcher import (
    Batcher,
    BatchSettings,
    batch_key,
    batch_rows,
    merge,
    split,
)


def request_of(*arrays: Any, names: tuple[str, ...] = ("x",), **kwargs: Any) -> InferenceRequest:
    return InferenceRequest(
        [Tensor.from_numpy(name, array) for name, array in zip(names, arrays)], **kwargs
    )


def rows_of(n: int, start: int = 0, width: int = 3) -> np.ndarray:
    """``n`` rows whose values say which request they came from."""
    return np.arange(start, start + n * width, dtype=np.int64).reshape(n, width)


def rowwise(request: InferenceRequest) -> InferenceResponse:
    """An elementwise/rowwise model: y = x * 2, s = per-row sum, n = a scalar summary."""
    x = request.inputs[0].data
    return InferenceResponse([
        Tensor.from_numpy("y", x * 2),
        Tensor.from_numpy("s", x.reshape(x.shape[0], -1).sum(axis=1) if x.ndim else x),
        Tensor.from_numpy("n", np.asarray(x.size)),  # no batch axis
    ], model_name="m", model_version="1", parameters={"p": 1})


class FakeModel:
    """An async runner that records each request it runs; ``gate`` holds it until released."""

    def __init__(self, gated: bool = False, fail: Callable[[InferenceRequest], bool] | None = None,
                 yields: int = 0) -> None:
        self.calls: list[InferenceRequest] = []
        self.running = asyncio.Event()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail = fail
        self.yields = yields

    async def __call__(self, request: InferenceRequest, waited: list[float]) -> InferenceResponse:
        self.calls.append(request)
        self.running.set()
        await self.gate.wait()
        for _ in range(self.yields):
            await asyncio.sleep(0)
        if self.fail is not None and self.fail(request):
            raise ValueError("poisoned batch")
        return rowwise(request)

    @property
    def sizes(self) -> list[int]:
        return [c.inputs[0].shape[0] for c in self.calls]


def run(coroutine: Awaitable[Any], timeout: float = 5.0) -> Any:
    """asyncio.run with a hang guard: a lost waiter fails the test instead of stalling it."""
    async def guarded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)
    return asyncio.run(guarded())


def assert_answer(response: InferenceResponse, x: np.ndarray) -> None:
    """What ``x`` alone would get from the rowwise model (batched outputs only)."""
    alone = rowwise(request_of(x))
    got = {t.name: t for t in response.outputs}
    for name in ("y", "s"):
        expected = alone.output(name)
        assert got[name].shape == expected.shape
        assert got[name].datatype == expected.datatype
        np.testing.assert_array_equal(got[name].data, expected.data)


# -- batch_rows ---------------------------------------------------------------------------

def test_batch_rows_is_the_shared_first_dimension() -> None:
    assert batch_rows(request_of(rows_of(3))) == 3
    assert batch_rows(request_of(rows_of(2), np.zeros(2), names=("a", "b"))) == 2


@pytest.mark.parametrize("request_", [
    request_of(rows_of(2), np.zeros(3), names=("a", "b")),  # inputs disagree on rows
    request_of(np.asarray(5.0)),  # scalar: no batch axis
    request_of(np.zeros((0, 3))),  # no rows
    InferenceRequest([]),
], ids=["disagree", "scalar", "empty", "no-inputs"])
def test_unbatchable_requests_have_no_rows(request_: InferenceRequest) -> None:
    assert batch_rows(request_) is None


# -- batch_key ----------------------------------------------------------------------------

def test_same_layout_same_key_whatever_the_row_count() -> None:
    a = request_of(rows_of(1), parameters={"a": 1, "b": [1, 2]},
                   outputs=[RequestedOutput("y", {"binary_data": True})], id="one")
    b = request_of(rows_of(7), parameters={"b": [1, 2], "a": 1},
                   outputs=[RequestedOutput("y", {"binary_data": True})], id="two")
    assert batch_key(a) == batch_key(b)
    assert hash(batch_key(a)) == hash(batch_key(b))
    assert batch_key(request_of(rows_of(2))) == batch_key(request_of(rows_of(5)))


BASE = request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int64), names=("a", "b"))


@pytest.mark.parametrize("other", [
    request_of(np.zeros((2, 4), np.float32), np.zeros((2,), np.int64), names=("a", "b")),
    request_of(np.zeros((2, 3, 1), np.float32), np.zeros((2,), np.int64), names=("a", "b")),
    request_of(np.zeros((2, 3), np.float64), np.zeros((2,), np.int64), names=("a", "b")),
    request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int32), names=("a", "b")),
    request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int64), names=("a", "c")),
    request_of(np.zeros((2,), np.int64), np.zeros((2, 3), np.float32), names=("b", "a")),
    request_of(np.zeros((2, 3), np.float32), names=("a",)),
    request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int64), names=("a", "b"),
               parameters={"k": 1}),
    InferenceRequest([Tensor.from_numpy("a", np.zeros((2, 3), np.float32), {"p": 1}),
                      Tensor.from_numpy("b", np.zeros((2,), np.int64))]),
    request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int64), names=("a", "b"),
               outputs=[]),
    request_of(np.zeros((2, 3), np.float32), np.zeros((2,), np.int64), names=("a", "b"),
               outputs=[RequestedOutput("y")]),
], ids=["trailing-dim", "rank", "datatype", "second-datatype", "input-name", "input-order",
        "input-count", "request-parameters", "tensor-parameters", "no-outputs-vs-none",
        "requested-outputs"])
def test_different_layouts_have_different_keys(other: InferenceRequest) -> None:
    assert batch_key(other) != batch_key(BASE)


def test_requested_outputs_and_their_parameters_are_part_of_the_key() -> None:
    def key(*outputs: RequestedOutput, **params: Any) -> Any:
        return batch_key(request_of(rows_of(1), outputs=list(outputs), parameters=params))

    assert key(RequestedOutput("y")) == key(RequestedOutput("y"))
    assert key(RequestedOutput("y")) != key(RequestedOutput("s"))
    assert key(RequestedOutput("y"), RequestedOutput("s")) != key(RequestedOutput("s"), RequestedOutput("y"))
    assert key(RequestedOutput("y")) != key(RequestedOutput("y", {"binary_data": True}))
    assert key(RequestedOutput("y"), binary_data_output=True) != key(RequestedOutput("y"))
    assert key(RequestedOutput("y"), v=1) != key(RequestedOutput("y"), v="1")


# -- merge and split ----------------------------------------------------------------------

def test_merge_concatenates_rows_of_every_input() -> None:
    requests = [
        request_of(rows_of(n, start=100 * i), np.full((n,), i), names=("a", "b"),
                   parameters={"p": 1}, outputs=[RequestedOutput("y")],
                   model_name="m", model_version="2", id=str(i))
        for i, n in enumerate((1, 3, 2))
    ]
    merged = merge(requests)
    a, b = merged.inputs
    assert (a.name, a.datatype, a.shape) == ("a", "INT64", (6, 3))
    np.testing.assert_array_equal(a.data, np.concatenate([rows_of(1), rows_of(3, 100), rows_of(2, 200)]))
    assert (b.name, b.shape) == ("b", (6,))
    np.testing.assert_array_equal(b.data, [0, 1, 1, 1, 2, 2])
    assert merged.parameters == {"p": 1}
    assert [o.name for o in merged.outputs] == ["y"]
    assert (merged.model_name, merged.model_version) == ("m", "2")
    # Inputs are not modified.
    assert [r.inputs[0].shape for r in requests] == [(1, 3), (3, 3), (2, 3)]


def test_merge_and_split_bytes_tensors() -> None:
    words = [[b"a"], [b"bb", b"\x00c"], [b""]]
    requests = [request_of(np.array(w, dtype=object)) for w in words]
    merged = merge(requests)
    assert (merged.inputs[0].datatype, merged.inputs[0].shape) == ("BYTES", (4,))
    assert merged.inputs[0].data.tolist() == [b"a", b"bb", b"\x00c", b""]

    upper = np.array([w.upper() for w in merged.inputs[0].data], dtype=object)
    parts = split(InferenceResponse([Tensor("u", "BYTES", (4,), upper)]), [1, 2, 1])
    assert [p.outputs[0].data.tolist() for p in parts] == [[b"A"], [b"BB", b"\x00C"], [b""]]
    assert [p.outputs[0].shape for p in parts] == [(1,), (2,), (1,)]
    assert all(p.outputs[0].datatype == "BYTES" for p in parts)


def test_split_slices_batched_outputs_for_mixed_sizes() -> None:
    xs = [rows_of(1), rows_of(3, 100), rows_of(2, 200)]
    response = rowwise(merge([request_of(x) for x in xs]))
    parts = split(response, [1, 3, 2])
    assert len(parts) == 3
    for part, x in zip(parts, xs):
        assert [t.name for t in part.outputs] == ["y", "s", "n"]
        assert_answer(part, x)
        # The scalar summary has no batch axis: every request gets the whole of it.
        n = part.output("n")
        assert n.shape == () and int(n.data) == 18
        assert (part.model_name, part.model_version, part.parameters) == ("m", "1", {"p": 1})
    # Each part owns its outputs list and parameters.
    parts[0].parameters["q"] = 2
    parts[0].outputs.clear()
    assert parts[1].parameters == {"p": 1} and len(parts[1].outputs) == 3


def test_split_gives_outputs_without_the_batch_axis_whole_to_everyone() -> None:
    table = Tensor.from_numpy("table", np.arange(10).reshape(5, 2))  # 5 != 4 rows
    parts = split(InferenceResponse([table, Tensor.from_numpy("row", np.arange(4))]), [1, 3])
    for part in parts:
        assert part.output("table").shape == (5, 2)
        np.testing.assert_array_equal(part.output("table").data, np.arange(10).reshape(5, 2))
    assert [p.output("row").data.tolist() for p in parts] == [[0], [1, 2, 3]]


def test_split_keeps_trailing_dimensions() -> None:
    data = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    parts = split(InferenceResponse([Tensor.from_numpy("z", data)]), [2, 1, 1])
    assert [p.outputs[0].shape for p in parts] == [(2, 3, 2), (1, 3, 2), (1, 3, 2)]
    np.testing.assert_array_equal(np.concatenate([p.outputs[0].data for p in parts]), data)


# -- Batcher --------------------------------------------------------------------------------

def test_batch_settings_enabled() -> None:
    assert not BatchSettings(0).enabled and not BatchSettings(1).enabled
    assert BatchSettings(2).enabled


def test_concurrent_submits_merge_up_to_max_batch_size() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(4))
        xs = [rows_of(1, start=10 * i) for i in range(10)]
        responses = await asyncio.gather(*(batcher.submit(request_of(x)) for x in xs))
        for response, x in zip(responses, xs):
            assert_answer(response, x)
        assert model.sizes == [4, 4, 2]

    run(main())


def test_mixed_row_counts_never_exceed_max_batch_size() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(4))
        xs = [rows_of(n, start=100 * i) for i, n in enumerate((1, 3, 2, 2, 1, 3, 1))]
        responses = await asyncio.gather(*(batcher.submit(request_of(x)) for x in xs))
        for response, x in zip(responses, xs):
            assert_answer(response, x)
        assert max(model.sizes) <= 4
        assert sum(model.sizes) == 13
        assert len(model.calls) < len(xs)  # something merged

    run(main())


def test_incompatible_requests_are_never_merged_together() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(16))
        requests = []
        for i in range(12):
            kind = i % 4
            x = rows_of(1 + i % 3, start=1000 * i, width=3 if kind != 1 else 5)
            if kind == 2:
                x = x.astype(np.float32)
            requests.append(request_of(x, parameters={"v": 1} if kind == 3 else {}))
        responses = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for response, request in zip(responses, requests):
            assert_answer(response, request.inputs[0].data)
        for call in model.calls:
            assert call.inputs[0].shape[1:] in ((3,), (5,))
        keys = {batch_key(call) for call in model.calls}
        assert len(keys) == 4 == len(model.calls)  # one merged call per kind
        by_key = {batch_key(r): 0 for r in requests}
        for r in requests:
            by_key[batch_key(r)] += batch_rows(r)
        assert sorted(model.sizes) == sorted(by_key.values())

    run(main())


def test_a_request_of_max_batch_size_rows_runs_alone() -> None:
    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(4))
        small = [asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 10 * i)))) for i in range(3)]
        await model.running.wait()
        big = request_of(rows_of(4, 500))
        bigger = request_of(rows_of(9, 900))
        large = [asyncio.ensure_future(batcher.submit(r)) for r in (big, bigger)]
        await asyncio.sleep(0.01)
        # The large ones did not queue behind the busy model: they already reached it.
        assert any(c is big for c in model.calls) and any(c is bigger for c in model.calls)
        model.gate.set()
        assert_answer(await large[0], big.inputs[0].data)
        assert_answer(await large[1], bigger.inputs[0].data)
        for i, task in enumerate(small):
            assert_answer(await task, rows_of(1, 10 * i))
        assert sorted(model.sizes) == [3, 4, 9]

    run(main())


def test_unbatchable_requests_bypass_the_queue() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(4))
        ragged = request_of(rows_of(2), np.zeros(3), names=("a", "b"))
        scalar = request_of(np.asarray(3))
        await asyncio.gather(batcher.submit(ragged), batcher.submit(scalar))
        assert model.calls[0] is ragged and model.calls[1] is scalar

    run(main())


def test_a_batch_of_one_runs_the_original_request() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(4))
        request = request_of(rows_of(2), id="abc")
        response = await batcher.submit(request)
        assert model.calls == [request] and model.calls[0] is request
        assert response.output("n").data == 6

    run(main())


def test_a_failing_batch_fails_only_the_requests_that_fail_alone() -> None:
    async def main() -> None:
        model = FakeModel(fail=lambda r: bool((r.inputs[0].data < 0).any()))
        batcher = Batcher(model, BatchSettings(8))
        mixed = [rows_of(1, 10 * i) for i in range(3)]
        mixed[1] = -mixed[1] - 1  # the one poisoned request of its batch
        healthy = [rows_of(2, 100 * i, width=5) for i in range(3)]
        results = await asyncio.gather(
            *(batcher.submit(request_of(x)) for pair in zip(mixed, healthy) for x in pair),
            return_exceptions=True,
        )
        # The merged batch of 3 failed, then ran one request at a time; the other group is fine.
        assert sorted(model.sizes) == [1, 1, 1, 3, 6]
        first_group, good = results[0::2], results[1::2]
        assert isinstance(first_group[1], ValueError) and str(first_group[1]) == "poisoned batch"
        assert_answer(first_group[0], mixed[0])
        assert_answer(first_group[2], mixed[2])
        for response, x in zip(good, healthy):
            assert_answer(response, x)
        # The batcher keeps working after a failed batch.
        assert_answer(await batcher.submit(request_of(rows_of(1))), rows_of(1))

    run(main())


def test_a_cancelled_waiter_never_reaches_the_model() -> None:
    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(8))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 0))))
        await model.running.wait()
        doomed = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 666))))
        kept = asyncio.ensure_future(batcher.submit(request_of(rows_of(2, 30))))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        model.gate.set()
        assert_answer(await first, rows_of(1, 0))
        assert_answer(await kept, rows_of(2, 30))
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert not any((c.inputs[0].data == 666).any() for c in model.calls)
        assert model.sizes == [1, 2]

    run(main())


def test_a_cancelled_first_waiter_does_not_hold_up_the_rest() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(8, max_batch_delay=0.3))
        doomed = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 666, width=5))))
        await asyncio.sleep(0)
        doomed.cancel()
        await asyncio.sleep(0)
        started = time.perf_counter()
        xs = [rows_of(1, 10 * i) for i in range(8)]  # a full batch of another layout
        responses = await asyncio.gather(*(batcher.submit(request_of(x)) for x in xs))
        for response, x in zip(responses, xs):
            assert_answer(response, x)
        # Neither the cancelled request's layout nor its deadline decide the next batch.
        assert time.perf_counter() - started < 0.2
        assert model.sizes == [8]

    run(main())


def test_a_cancelled_waiter_of_a_running_batch_leaves_the_others_answered() -> None:
    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(8))
        tasks = [asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 10 * i)))) for i in range(3)]
        await model.running.wait()
        tasks[1].cancel()
        await asyncio.sleep(0)
        model.gate.set()
        assert_answer(await tasks[0], rows_of(1, 0))
        assert_answer(await tasks[2], rows_of(1, 20))
        assert tasks[1].cancelled()

    run(main())


def test_max_batch_delay_waits_for_stragglers() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(8, max_batch_delay=0.1))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 0))))
        await asyncio.sleep(0.005)
        assert model.calls == []
        second = await batcher.submit(request_of(rows_of(2, 10)))
        assert_answer(second, rows_of(2, 10))
        assert_answer(await first, rows_of(1, 0))
        assert model.sizes == [3]

    run(main())


def test_max_batch_delay_is_measured_from_the_first_request() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(8, max_batch_delay=0.03))
        started = time.perf_counter()
        await batcher.submit(request_of(rows_of(1)))
        waited = time.perf_counter() - started
        assert 0.025 <= waited < 0.5
        assert model.sizes == [1]

    run(main())


def test_a_full_batch_does_not_wait_out_the_delay() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(4, max_batch_delay=1.0))
        started = time.perf_counter()
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1))))
        await asyncio.sleep(0.005)
        await asyncio.gather(*(batcher.submit(request_of(rows_of(1, 10 * i))) for i in range(3)))
        await first
        assert time.perf_counter() - started < 0.5
        assert model.sizes == [4]

    run(main())


def test_zero_delay_runs_a_lone_request_at_once() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(8))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 0))))
        await asyncio.sleep(0.005)
        assert model.sizes == [1]
        await batcher.submit(request_of(rows_of(1, 10)))
        await first
        assert model.sizes == [1, 1]

    run(main())


def test_zero_delay_batches_what_queued_while_the_model_was_busy() -> None:
    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(8))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 0))))
        await model.running.wait()
        queued = [asyncio.ensure_future(batcher.submit(request_of(rows_of(n, 100 * n)))) for n in (1, 3, 2)]
        await asyncio.sleep(0.005)
        assert model.sizes == [1]
        model.gate.set()
        assert_answer(await first, rows_of(1, 0))
        for task, n in zip(queued, (1, 3, 2)):
            assert_answer(await task, rows_of(n, 100 * n))
        assert model.sizes == [1, 6]

    run(main())


def test_the_observer_sees_rows_and_queue_delays() -> None:
    seen: list[tuple[int, list[float]]] = []

    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(8), lambda rows, waits: seen.append((rows, waits)))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(2))))
        await model.running.wait()
        later = [asyncio.ensure_future(batcher.submit(request_of(rows_of(n)))) for n in (1, 3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(first, *later)

    run(main())
    assert [rows for rows, _ in seen] == [2, 4]
    assert len(seen[0][1]) == 1 and len(seen[1][1]) == 2
    assert all(w >= 0 for _, waits in seen for w in waits)
    assert min(seen[1][1]) >= 0.009  # they waited while the first batch ran


def test_a_runner_cancelled_underneath_fails_its_waiters_instead_of_hanging() -> None:
    """e.g. the thread pool cancelling its futures at shutdown."""
    calls: list[int] = []

    async def main() -> None:
        opened = asyncio.Event()

        async def runner(request: InferenceRequest, waited: list[float]) -> InferenceResponse:
            calls.append(request.inputs[0].shape[0])
            if len(calls) == 1:
                await opened.wait()
                raise asyncio.CancelledError()
            return rowwise(request)

        batcher = Batcher(runner, BatchSettings(8))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1))))
        await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(batcher.submit(request_of(rows_of(1, 10 * i)))) for i in range(3)]
        await asyncio.sleep(0.005)
        opened.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        if hasattr(asyncio.Task, "cancelling"):  # 3.11+: the dispatcher carries on
            for result, i in zip(results[1:], range(3)):
                assert_answer(result, rows_of(1, 10 * i))
        else:  # 3.10: it stops, and cancels the rest rather than stranding them
            assert all(isinstance(r, asyncio.CancelledError) for r in results[1:])
        assert_answer(await batcher.submit(request_of(rows_of(1))), rows_of(1))

    run(main(), timeout=2)
    assert calls[0] == 1


def test_a_cancelled_dispatcher_cancels_its_waiters() -> None:
    async def main() -> None:
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(8))
        first = asyncio.ensure_future(batcher.submit(request_of(rows_of(1))))
        await model.running.wait()
        queued = asyncio.ensure_future(batcher.submit(request_of(rows_of(2))))
        await asyncio.sleep(0)
        batcher._task.cancel()
        results = await asyncio.gather(first, queued, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert model.sizes == [1]

    run(main(), timeout=2)


def test_a_failing_observer_does_not_fail_requests() -> None:
    def observe(rows: int, waits: list[float]) -> None:
        raise RuntimeError("metrics broke")

    async def main() -> None:
        batcher = Batcher(FakeModel(), BatchSettings(8), observe)
        responses = await asyncio.gather(*(batcher.submit(request_of(rows_of(1, i))) for i in range(3)))
        for response, i in zip(responses, range(3)):
            assert_answer(response, rows_of(1, i))

    run(main(), timeout=2)


def test_a_batcher_works_across_event_loops() -> None:
    """An endpoint built once may be driven by successive ``asyncio.run`` calls (tests do)."""
    model_calls: list[int] = []

    async def runner(request: InferenceRequest, waited: list[float]) -> InferenceResponse:
        model_calls.append(request.inputs[0].shape[0])
        return rowwise(request)

    batcher = Batcher(runner, BatchSettings(8, max_batch_delay=0.005))
    async def main(i: int) -> None:
        responses = await asyncio.gather(
            batcher.submit(request_of(rows_of(1, i))), batcher.submit(request_of(rows_of(2, i)))
        )
        assert_answer(responses[1], rows_of(2, i))

    for i in range(3):
        run(main(i), timeout=2)
    assert model_calls == [3, 3, 3]


# -- property: batching is invisible --------------------------------------------------------

@st.composite
def workloads(draw: st.DrawFn) -> tuple[int, list[tuple[np.ndarray, int]], int]:
    max_batch_size = draw(st.integers(2, 8))
    count = draw(st.integers(1, 16))
    items = []
    for _ in range(count):
        rows = draw(st.integers(1, max_batch_size + 2))
        width = draw(st.sampled_from([2, 3]))
        values = draw(st.lists(st.integers(-(2**40), 2**40), min_size=rows * width,
                               max_size=rows * width))
        stagger = draw(st.integers(0, 3))  # event-loop turns before this request arrives
        items.append((np.array(values, dtype=np.int64).reshape(rows, width), stagger))
    model_turns = draw(st.integers(0, 3))  # event-loop turns one model run takes
    return max_batch_size, items, model_turns


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_batched_answers_equal_running_alone(workload: tuple[int, list[tuple[np.ndarray, int]], int]) -> None:
    max_batch_size, items, model_turns = workload
    model = FakeModel(yields=model_turns)

    submitted: list[InferenceRequest] = []

    async def one(x: np.ndarray, stagger: int) -> InferenceResponse:
        for _ in range(stagger):
            await asyncio.sleep(0)
        request = request_of(x)
        submitted.append(request)
        return await batcher.submit(request)

    async def main() -> list[InferenceResponse]:
        return await asyncio.gather(*(one(x, stagger) for x, stagger in items))

    batcher = Batcher(model, BatchSettings(max_batch_size))
    responses = run(main())
    for response, (x, _) in zip(responses, items):
        assert_answer(response, x)
    for call in model.calls:
        if not any(call is r for r in submitted):  # a merged request
            assert call.inputs[0].shape[0] <= max_batch_size
    # Every row ran exactly once.
    ran = np.concatenate([c.inputs[0].data.reshape(-1) for c in model.calls])
    sent = np.concatenate([x.reshape(-1) for x, _ in items])
    assert sorted(ran.tolist()) == sorted(sent.tolist())


def test_a_lone_client_stops_paying_the_batch_delay() -> None:
    """After a run of one-request batches, requests run at once (every 16th still probes)."""

    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(8, max_batch_delay=0.1))
        started = time.perf_counter()
        for i in range(40):
            assert_answer(await batcher.submit(request_of(rows_of(1, i))), rows_of(1, i))
        # 40 full waits would take 4 s; a few early ones and the probes take well under 2 s.
        assert time.perf_counter() - started < 2.0
        assert model.sizes == [1] * 40

    run(main(), timeout=10)


def test_a_burst_runs_once_arrivals_stop_not_at_the_deadline() -> None:
    async def main() -> None:
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(64, max_batch_delay=0.5))
        await asyncio.gather(*(batcher.submit(request_of(rows_of(1, i))) for i in range(40)))
        started = time.perf_counter()
        answers = await asyncio.gather(*(batcher.submit(request_of(rows_of(1, i))) for i in range(4)))
        assert time.perf_counter() - started < 0.25  # the deadline was 0.5 s away
        for i, answer in enumerate(answers):
            assert_answer(answer, rows_of(1, i))
        assert model.sizes[-1] == 4

    run(main(), timeout=10)
