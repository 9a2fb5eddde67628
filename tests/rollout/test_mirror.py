"""Shadow traffic: the comparison of answers, and the bounded, cancellable mirror."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from shoal.errors import InvalidInput, ShoalError, Unavailable
from shoal.rollout import mirror as mirror_module
from shoal.rollout.metrics import RolloutMetrics
from shoal.rollout.mirror import Mirror, compare
from shoal.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # RolloutMetrics.snapshot() reads the multiprocess files when this is set.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)


@pytest.fixture
def metrics() -> RolloutMetrics:
    return RolloutMetrics(CollectorRegistry())


def answer(**outputs: Any) -> InferenceResponse:
    return InferenceResponse([Tensor.from_numpy(name, value) for name, value in outputs.items()])


def tensor(name: str, data: Any, shape: tuple[int, ...], datatype: str = "FP32") -> Tensor:
    return Tensor(name, datatype, shape, np.asarray(data))


def request(**parameters: Any) -> InferenceRequest:
    return InferenceRequest([Tensor.from_numpy("x", np.array([[1.0, 2.0]]))], id="req-1",
                            parameters=parameters)


def counters(metrics: RolloutMetrics, model: str = "iris") -> dict[str, float]:
    return metrics.snapshot().get(model, {})


# -- compare ---------------------------------------------------------------------------------------


def test_labels_count_the_values_that_agree() -> None:
    figures = compare(answer(label=np.array([0, 1, 2, 1])), answer(label=np.array([0, 2, 2, 1])))
    assert figures == {"label": {"compared": 4.0, "agreed": 3.0}}


def test_a_two_dimensional_label_output_counts_every_value() -> None:
    figures = compare(answer(y=[[1, 2], [3, 4]]), answer(y=[[1, 2], [3, 5]]))
    assert figures == {"y": {"compared": 4.0, "agreed": 3.0}}


def test_booleans_are_compared_exactly() -> None:
    assert compare(answer(ok=[True, False, True]), answer(ok=[True, True, True])) == {
        "ok": {"compared": 3.0, "agreed": 2.0}
    }


def test_floats_sum_the_absolute_differences() -> None:
    figures = compare(answer(p=np.array([0.5, 0.25, 1.0], dtype=np.float32)),
                      answer(p=np.array([0.25, 0.5, 1.0], dtype=np.float32)))
    assert figures["p"]["compared"] == 3.0
    assert figures["p"]["abs_difference"] == pytest.approx(0.5)
    assert "agreed" not in figures["p"]


def test_a_float_on_either_side_makes_it_a_difference() -> None:
    figures = compare(answer(p=np.array([1, 2])), answer(p=np.array([1.0, 2.5])))
    assert figures == {"p": {"compared": 2.0, "abs_difference": pytest.approx(0.5)}}
    figures = compare(answer(p=np.array([1.5, 2.0])), answer(p=np.array([1, 2])))
    assert figures == {"p": {"compared": 2.0, "abs_difference": pytest.approx(0.5)}}


def test_identical_floats_differ_by_zero() -> None:
    data = np.array([[0.1, 0.9], [0.7, 0.3]])
    assert compare(answer(p=data), answer(p=data.copy())) == {"p": {"compared": 4.0, "abs_difference": 0.0}}


def test_a_nan_against_a_number_is_not_counted_as_agreement() -> None:
    # A shadow that answers NaN where the primary answers 1.0 must not look identical to it.
    figures = compare(answer(p=np.array([1.0, 2.0])), answer(p=np.array([np.nan, 2.0])))["p"]
    assert "mismatch" in figures or figures["abs_difference"] != 0.0, figures


def test_another_shape_is_a_mismatch() -> None:
    figures = compare(answer(p=np.zeros((2, 3))), answer(p=np.zeros((3, 2))))
    assert figures == {"p": {"mismatch": 1.0}}
    figures = compare(answer(p=np.zeros(6)), answer(p=np.zeros((1, 6))))
    assert figures == {"p": {"mismatch": 1.0}}


def test_an_output_the_shadow_lacks_is_a_mismatch() -> None:
    figures = compare(answer(label=[1, 2], score=[0.5, 0.5]), answer(label=[1, 2], other=[0.5, 0.5]))
    assert figures == {"label": {"compared": 2.0, "agreed": 2.0}, "score": {"mismatch": 1.0}}


def test_a_shadow_without_outputs_mismatches_every_output() -> None:
    assert compare(answer(a=[1], b=[2.0]), answer()) == {"a": {"mismatch": 1.0}, "b": {"mismatch": 1.0}}


def test_outputs_only_the_shadow_has_are_ignored() -> None:
    assert compare(answer(a=[1], b=[2]), answer(a=[1], b=[2], c=[3])) == {
        "a": {"compared": 1.0, "agreed": 1.0}, "b": {"compared": 1.0, "agreed": 1.0},
    }
    assert compare(answer(), answer(a=[1])) == {}


def test_one_output_each_is_compared_whatever_the_names() -> None:
    figures = compare(answer(predict=[1, 2, 3]), answer(output_0=[1, 2, 0]))
    assert figures == {"predict": {"compared": 3.0, "agreed": 2.0}}


def test_with_several_outputs_names_must_match() -> None:
    figures = compare(answer(a=[1], b=[1]), answer(a=[1], c=[1]))
    assert figures == {"a": {"compared": 1.0, "agreed": 1.0}, "b": {"mismatch": 1.0}}


def test_bytes_outputs_are_compared_exactly() -> None:
    primary = answer(label=[b"setosa", b"versicolor", b"virginica"])
    shadow = answer(label=[b"setosa", b"virginica", b"virginica"])
    assert primary.outputs[0].data.dtype == object
    assert compare(primary, shadow) == {"label": {"compared": 3.0, "agreed": 2.0}}


def test_string_outputs_are_compared_exactly() -> None:
    primary = answer(label=np.array([["cat", "dog"]]))
    shadow = answer(label=np.array([["cat", "cow"]]))
    assert compare(primary, shadow) == {"label": {"compared": 2.0, "agreed": 1.0}}


def test_object_arrays_of_python_values_are_compared_exactly() -> None:
    primary = InferenceResponse([tensor("o", np.array(["a", 1, None], dtype=object), (3,), "BYTES")])
    shadow = InferenceResponse([tensor("o", np.array(["a", 2, None], dtype=object), (3,), "BYTES")])
    assert compare(primary, shadow) == {"o": {"compared": 3.0, "agreed": 2.0}}


def test_text_against_floats_is_a_mismatch() -> None:
    assert compare(answer(p=["a", "b"]), answer(p=np.array([1.0, 2.0]))) == {"p": {"mismatch": 1.0}}


def test_flat_data_is_compared_in_its_declared_shape() -> None:
    primary = InferenceResponse([tensor("y", [1, 2, 3, 4], (2, 2), "INT64")])
    shadow = InferenceResponse([tensor("y", [[1, 2], [3, 0]], (2, 2), "INT64")])
    assert compare(primary, shadow) == {"y": {"compared": 4.0, "agreed": 3.0}}


# -- Mirror: sampling --------------------------------------------------------------------------------


def test_sampling_at_100_and_0_percent(metrics: RolloutMetrics, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mirror_module.random, "random", lambda: 0.0)
    assert Mirror("iris", _never_called, 100.0, 1, metrics).sampled()
    assert not Mirror("iris", _never_called, 0.0, 1, metrics).sampled()


def test_sampling_compares_a_draw_with_the_percentage(
    metrics: RolloutMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = Mirror("iris", _never_called, 30.0, 1, metrics)
    monkeypatch.setattr(mirror_module.random, "random", lambda: 0.29)
    assert mirror.sampled()
    monkeypatch.setattr(mirror_module.random, "random", lambda: 0.30)
    assert not mirror.sampled()


async def _never_called(request: InferenceRequest) -> InferenceResponse:  # pragma: no cover
    raise AssertionError("not called")


# -- Mirror: bounded, cancellable --------------------------------------------------------------------


def test_requests_beyond_max_pending_are_skipped_and_counted(metrics: RolloutMetrics) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        calls: list[InferenceRequest] = []

        async def stuck(shadow_request: InferenceRequest) -> InferenceResponse:
            calls.append(shadow_request)
            await gate.wait()  # never set: the shadow never answers
            raise AssertionError("unreachable")

        mirror = Mirror("iris", stuck, 100.0, 2, metrics, concurrency=None)
        primary_request = request()
        for _ in range(5):
            mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))
        assert mirror.pending == 2
        assert counters(metrics)["shadow_skipped"] == 3.0
        await asyncio.sleep(0)  # the two tasks start and block
        assert len(calls) == 2
        tasks = list(mirror._tasks)
        await mirror.close()
        assert all(task.cancelled() for task in tasks)
        assert mirror.pending == 0
        # A cancelled shadow request is no outcome of the shadow's.
        assert not any(key.startswith("requests|shadow|") for key in counters(metrics))

    asyncio.run(scenario())


def test_finished_shadow_requests_free_their_slot(metrics: RolloutMetrics) -> None:
    async def scenario() -> None:
        gate = asyncio.Event()

        async def slow(shadow_request: InferenceRequest) -> InferenceResponse:
            await gate.wait()
            return answer(y=[1])

        mirror = Mirror("iris", slow, 100.0, 1, metrics)
        primary_request = request()
        mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))
        mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))  # skipped
        tasks = list(mirror._tasks)
        gate.set()
        await asyncio.gather(*tasks)
        await asyncio.sleep(0)  # the done callbacks run
        assert mirror.pending == 0
        mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))  # not skipped
        assert mirror.pending == 1
        await asyncio.gather(*mirror._tasks)
        figures = counters(metrics)
        assert figures["shadow_skipped"] == 1.0
        assert figures["requests|shadow|success"] == 2.0

    asyncio.run(scenario())


def test_close_awaits_the_closing_callback(metrics: RolloutMetrics) -> None:
    closed: list[bool] = []

    async def closing() -> None:
        closed.append(True)

    async def scenario() -> None:
        mirror = Mirror("iris", _never_called, 100.0, 1, metrics, closing)
        await mirror.close()

    asyncio.run(scenario())
    assert closed == [True]


def test_the_shadow_request_is_a_copy_without_routing(metrics: RolloutMetrics) -> None:
    seen: list[InferenceRequest] = []

    async def record(shadow_request: InferenceRequest) -> InferenceResponse:
        seen.append(shadow_request)
        return answer(y=[1])

    async def scenario() -> None:
        mirror = Mirror("iris", record, 100.0, 4, metrics)
        primary_request = request(**{"routing": "{}", "shoal-variant": "canary", "user": "u1"})
        primary_request.outputs = [RequestedOutput("y")]
        mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))
        await asyncio.gather(*mirror._tasks)
        assert primary_request.parameters == {"routing": "{}", "shoal-variant": "canary", "user": "u1"}

    asyncio.run(scenario())
    (shadow_request,) = seen
    assert shadow_request.id == "req-1"
    assert shadow_request.parameters == {"user": "u1"}
    assert shadow_request.requested_output_names == ["y"]
    assert [t.name for t in shadow_request.inputs] == ["x"]


@pytest.mark.parametrize(("error", "outcome"), [(Unavailable("down"), "503"),
                                                (InvalidInput("bad input"), "400"),
                                                (ShoalError("broken"), "500")])
def test_a_shadow_error_counts_its_status_under_shadow(
    metrics: RolloutMetrics, error: ShoalError, outcome: str
) -> None:
    async def failing(shadow_request: InferenceRequest) -> InferenceResponse:
        raise error

    _mirror_once(metrics, failing, answer(y=[1]))
    figures = counters(metrics)
    assert figures == {**figures, f"requests|shadow|{outcome}": 1.0}
    assert not any(key.startswith(("requests|stable|", "requests|canary|")) for key in figures)
    assert figures["bucket|shadow|+Inf"] == 1.0  # timed too
    assert not any(key.startswith("shadow|") for key in figures)  # nothing compared


def test_any_other_exception_counts_as_500(metrics: RolloutMetrics) -> None:
    async def crashing(shadow_request: InferenceRequest) -> InferenceResponse:
        raise RuntimeError("boom")

    _mirror_once(metrics, crashing, answer(y=[1]))
    assert counters(metrics)["requests|shadow|500"] == 1.0


def test_a_shadow_answer_is_compared_and_counted(metrics: RolloutMetrics) -> None:
    async def shadow(shadow_request: InferenceRequest) -> InferenceResponse:
        return answer(label=[0, 1, 1, 2], score=np.array([0.5, 0.5]), extra=[1])

    primary = answer(label=[0, 1, 2, 2], score=np.array([0.25, 1.0]), missing=[1])
    _mirror_once(metrics, shadow, primary)
    figures = counters(metrics)
    assert figures["requests|shadow|success"] == 1.0
    assert figures["shadow|label|compared"] == 4.0
    assert figures["shadow|label|agreed"] == 3.0
    assert figures["shadow|score|compared"] == 2.0
    assert figures["shadow|score|abs_difference"] == pytest.approx(0.75)
    assert figures["shadow|missing|mismatches"] == 1.0
    assert "shadow|missing|compared" not in figures
    assert not any(key.startswith("shadow|extra|") for key in figures)


def _mirror_once(metrics: RolloutMetrics, call: Any, primary: InferenceResponse) -> None:
    async def scenario() -> None:
        mirror = Mirror("iris", call, 100.0, 1, metrics)
        primary_request = request()
        mirror.fire(primary_request, primary_request.inputs, primary)
        await asyncio.gather(*mirror._tasks)

    asyncio.run(scenario())


def test_a_local_shadow_runs_one_call_at_a_time(metrics: RolloutMetrics) -> None:
    """A slow shadow never takes more than one model thread from the primary."""
    async def scenario() -> None:
        gate = asyncio.Event()
        running: list[int] = []
        most = 0

        async def slow(shadow_request: InferenceRequest) -> InferenceResponse:
            nonlocal most
            running.append(1)
            most = max(most, len(running))
            await gate.wait()
            running.pop()
            return answer(y=[1])

        mirror = Mirror("iris", slow, 100.0, 8, metrics)
        primary_request = request()
        for _ in range(5):
            mirror.fire(primary_request, primary_request.inputs, answer(y=[1]))
        for _ in range(5):
            await asyncio.sleep(0)
        assert most == 1 and mirror.pending == 5
        gate.set()
        while mirror.pending:
            await asyncio.sleep(0)
        assert most == 1
        assert counters(metrics)["requests|shadow|success"] == 5.0

    asyncio.run(scenario())


def test_equal_infinities_agree_and_an_infinity_against_a_number_is_a_mismatch() -> None:
    inf = float("inf")
    assert compare(answer(y=[-inf, 1.0]), answer(y=[-inf, 1.5])) == {
        "y": {"compared": 2.0, "abs_difference": 0.5}
    }
    assert compare(answer(y=[inf, 1.0]), answer(y=[1e308, 1.0])) == {"y": {"mismatch": 1.0}}
    # Finite values whose difference overflows cannot give a mean either.
    assert compare(answer(y=[1.7e308]), answer(y=[-1.7e308])) == {"y": {"mismatch": 1.0}}
