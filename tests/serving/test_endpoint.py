"""ModelEndpoint and input conforming, with small real models."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from shoal import InferenceRequest, InferenceResponse, Model, RequestedOutput, Tensor, TensorSpec
from shoal.datatypes import numpy_dtype
from shoal.errors import InvalidInput, ModelFailure, Unavailable
from shoal.serving.endpoint import DEFAULT_OUTPUT, ModelEndpoint, ModelState, conform_inputs
from shoal.serving.executor import Executor


@pytest.fixture(scope="module")
def executor() -> Iterator[Executor]:
    executor = Executor(threads=2)
    yield executor
    executor.shutdown()


def request_of(*arrays: Any, names: tuple[str, ...] = ("x",), **kwargs: Any) -> InferenceRequest:
    return InferenceRequest(
        [Tensor.from_numpy(name, array) for name, array in zip(names, arrays)], **kwargs
    )


def infer(endpoint: ModelEndpoint, request: InferenceRequest) -> InferenceResponse:
    return asyncio.run(endpoint.infer(request))


class Doubler(Model):
    """Returns whatever ``self.result`` builds from the doubled input."""

    def __init__(self, result=lambda x: x * 2, **kwargs: Any) -> None:
        super().__init__("doubler", "3", **kwargs)
        self.result = result
        self.threads: list[int] = []

    def predict(self, request: InferenceRequest):
        self.threads.append(threading.get_ident())
        return self.result(request.as_numpy())


# -- conform_inputs -----------------------------------------------------------------------


def tensor(datatype: str, shape=(2, 4)) -> Tensor:
    if datatype == "BYTES":
        data = np.full(shape, b"a", dtype=object)
    else:
        data = np.ones(shape, dtype={"FP32": np.float32, "FP64": np.float64,
                                     "INT64": np.int64, "INT32": np.int32}[datatype])
    return Tensor("x", datatype, tuple(shape), data)


def test_no_declared_inputs_accepts_anything() -> None:
    inputs = [tensor("FP32"), tensor("BYTES")]
    assert conform_inputs(inputs, [], "m") is inputs


@pytest.mark.parametrize("shape", [(2, 3), (2,), (2, 4, 1)])
def test_shape_mismatch_names_the_expected_shape(shape) -> None:
    with pytest.raises(InvalidInput) as info:
        conform_inputs([tensor("FP32", shape)], [TensorSpec("x", "FP32", (-1, 4))], "m")
    message = str(info.value)
    assert f"has shape {list(shape)}" in message and "expects [-1, 4]" in message


def test_variable_dimensions_accept_any_size() -> None:
    (out,) = conform_inputs([tensor("FP32", (7, 4))], [TensorSpec("x", "FP32", (-1, -1))], "m")
    assert out.shape == (7, 4)


@pytest.mark.parametrize("source", ["FP32", "INT64", "INT32"])
def test_safe_casts_to_fp64(source: str) -> None:
    (out,) = conform_inputs([tensor(source)], [TensorSpec("x", "FP64", (-1, 4))], "m")
    assert out.datatype == "FP64" and out.data.dtype == np.float64
    assert out.data.tolist() == [[1.0] * 4] * 2


@pytest.mark.parametrize("source,target", [("BYTES", "FP64"), ("FP32", "BYTES")])
def test_bytes_never_converts(source: str, target: str) -> None:
    with pytest.raises(InvalidInput) as info:
        conform_inputs([tensor(source)], [TensorSpec("x", target, (-1, 4))], "m")
    message = str(info.value)
    assert f"is {source} but model 'm' expects {target}" in message


@pytest.mark.parametrize("values,source,target", [
    ([5, -7], np.int64, "FP64"),
    ([5, 16777216], np.int64, "FP32"),
    ([0.5, -2.25, np.inf, np.nan], np.float64, "FP32"),
    ([3.0, -4.0], np.float64, "INT64"),
    ([2**31 - 1, -(2**31)], np.int64, "INT32"),
    ([0, 1], np.int64, "BOOL"),
    ([2**63 - 1], np.uint64, "INT64"),
])
def test_a_conversion_in_which_every_value_survives_is_made(values, source, target) -> None:
    sent = Tensor.from_numpy("x", np.array(values, dtype=source))
    (out,) = conform_inputs([sent], [TensorSpec("x", target, (-1,))], "m")
    assert out.datatype == target and out.data.dtype == numpy_dtype(target)
    assert np.array_equal(out.data.astype(np.float64), sent.data.astype(np.float64), equal_nan=True)


@pytest.mark.parametrize("values,source,target,culprit", [
    ([1, 9007199254740993], np.int64, "FP64", "9007199254740993"),  # no FP64 holds 2**53 + 1
    ([16777217], np.int64, "FP32", "16777217"),
    ([1.0, 1e40], np.float64, "FP32", "1e+40"),  # would be inf
    ([0.1], np.float64, "FP32", "0.1"),
    ([1.5], np.float64, "INT64", "1.5"),
    ([np.nan], np.float64, "INT64", "nan"),
    ([2**40], np.int64, "INT32", "1099511627776"),
    ([-1], np.int64, "UINT64", "-1"),  # would wrap to 2**64 - 1
    ([2], np.int64, "BOOL", "2"),
])
def test_a_conversion_that_would_change_a_value_is_refused_naming_it(
    values, source, target, culprit
) -> None:
    sent = Tensor.from_numpy("x", np.array(values, dtype=source))
    with pytest.raises(InvalidInput) as info:
        conform_inputs([sent], [TensorSpec("x", target, (-1,))], "m")
    message = str(info.value)
    assert f"is {sent.datatype} but model 'm' expects {target}" in message
    assert f"its value {culprit}" in message and f"send {target} data" in message


def test_every_mismatch_is_named_with_the_owner_kind() -> None:
    sent = Tensor.from_numpy("x", np.ones((1, 4)))
    with pytest.raises(InvalidInput) as info:
        conform_inputs([sent], [TensorSpec("text", "BYTES", (-1,))], "parse", "transformer")
    assert str(info.value) == (
        "input 'x' (its input 'text') has shape [1, 4] and is FP64 but transformer 'parse' "
        "expects [-1] (-1 is any size) and BYTES"
    )


def test_same_datatype_is_passed_through_unchanged() -> None:
    sent = tensor("FP32")
    assert conform_inputs([sent], [TensorSpec("x", "FP32", (-1, 4))], "m")[0] is sent


def test_several_inputs_are_matched_by_name() -> None:
    specs = [TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "INT64", (-1,))]
    a = Tensor.from_numpy("a", np.array([1, 2], dtype=np.float32))
    b = Tensor.from_numpy("b", np.array([1, 2]))
    out = conform_inputs([b, a], specs, "m")
    assert [(t.name, t.datatype) for t in out] == [("b", "INT64"), ("a", "FP64")]


def test_unknown_and_missing_inputs() -> None:
    specs = [TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "FP64", (-1,))]
    a = Tensor.from_numpy("a", np.zeros(1))
    with pytest.raises(InvalidInput, match=r"has no input 'c'; it expects \['a', 'b'\]"):
        conform_inputs([a, Tensor.from_numpy("c", np.zeros(1))], specs, "m")
    with pytest.raises(InvalidInput, match=r"missing input\(s\) \['b'\]"):
        conform_inputs([a], specs, "m")


# -- ModelEndpoint: what predict may return -----------------------------------------------


def test_ndarray_result_gets_the_default_output_name(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(), executor)
    response = infer(endpoint, request_of(np.array([1.0, 2.0]), id="r1"))
    assert (response.model_name, response.model_version, response.id) == ("doubler", "3", "r1")
    (out,) = response.outputs
    assert (out.name, out.datatype, out.shape, out.data.tolist()) == (
        DEFAULT_OUTPUT, "FP64", (2,), [2.0, 4.0]
    )


def test_ndarray_result_takes_the_single_declared_output_name(executor: Executor) -> None:
    model = Doubler()
    model.outputs = [TensorSpec("doubled", "FP64", (-1,))]
    response = infer(ModelEndpoint(model, executor), request_of(np.array([1.0])))
    assert response.outputs[0].name == "doubled"


def test_list_of_numbers_result(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(lambda x: [int(v) for v in x]), executor)
    out = infer(endpoint, request_of(np.array([3, 4]))).outputs[0]
    assert out.datatype == "INT64" and out.data.tolist() == [3, 4]


def test_dict_result(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(lambda x: {"max": x.max(), "labels": ["a", "b"]}), executor)
    response = infer(endpoint, request_of(np.array([1, 2], dtype=np.int32)))
    total, labels = response.outputs
    assert (total.name, total.datatype, total.shape, total.data.tolist()) == ("max", "INT32", (), 2)
    assert (labels.name, labels.datatype, labels.data.tolist()) == ("labels", "BYTES", [b"a", b"b"])


def test_tensor_and_list_of_tensors_results(executor: Executor) -> None:
    single = ModelEndpoint(Doubler(lambda x: Tensor.from_numpy("t", x)), executor)
    several = ModelEndpoint(
        Doubler(lambda x: [Tensor.from_numpy("a", x), Tensor.from_numpy("b", -x)]), executor
    )
    assert [t.name for t in infer(single, request_of(np.ones(2))).outputs] == ["t"]
    response = infer(several, request_of(np.ones(2)))
    assert [t.name for t in response.outputs] == ["a", "b"]
    assert response.outputs[1].data.tolist() == [-1.0, -1.0]


def test_inference_response_result(executor: Executor) -> None:
    built = lambda x: InferenceResponse([Tensor.from_numpy("r", x)], "ignored", "9", id="zzz")
    response = infer(ModelEndpoint(Doubler(built), executor), request_of(np.ones(1), id="mine"))
    # The endpoint stamps its own identity and the request's id.
    assert (response.model_name, response.model_version, response.id) == ("doubler", "3", "mine")
    assert response.outputs[0].name == "r"


def test_requested_outputs_are_filtered_and_ordered(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(lambda x: {"a": x, "b": x + 1, "c": x + 2}), executor)
    request = request_of(np.zeros(1), outputs=[RequestedOutput("c"), RequestedOutput("a")])
    assert [t.name for t in infer(endpoint, request).outputs] == ["c", "a"]


def test_requested_unknown_output(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(lambda x: {"a": x}), executor)
    request = request_of(np.zeros(1), outputs=[RequestedOutput("nope")])
    with pytest.raises(InvalidInput, match=r"has no output 'nope'; it produced \['a'\]"):
        infer(endpoint, request)


def test_inputs_are_checked_and_cast_before_predict(executor: Executor) -> None:
    model = Doubler(lambda x: x.dtype.name)
    model.inputs = [TensorSpec("x", "FP64", (-1, 2))]
    endpoint = ModelEndpoint(model, executor)
    out = infer(endpoint, request_of(np.ones((1, 2), np.float32))).outputs[0]
    assert out.as_strings() == ["float64"]
    with pytest.raises(InvalidInput, match=r"expects \[-1, 2\]"):
        infer(endpoint, request_of(np.ones((1, 3))))
    assert model.threads == [model.threads[0]]  # the bad request never reached predict


def test_sync_predict_runs_off_the_event_loop_thread(executor: Executor) -> None:
    model = Doubler()
    infer(ModelEndpoint(model, executor), request_of(np.ones(1)))
    assert model.threads and model.threads[0] != threading.get_ident()


class OnLoop(Doubler):
    """A model that says its requests of at most ``limit`` values may run on the loop."""

    def __init__(self, limit: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.asked: list[int] = []

    def runs_on_loop(self, request: InferenceRequest) -> bool:
        self.asked.append(threading.get_ident())
        return request.as_numpy().size <= self.limit


def test_a_request_the_model_calls_cheap_runs_on_the_event_loop(executor: Executor) -> None:
    model = OnLoop(limit=4)
    endpoint = ModelEndpoint(model, executor)
    small = infer(endpoint, request_of(np.ones(4)))
    large = infer(endpoint, request_of(np.ones(5)))
    loop_thread = threading.get_ident()  # asyncio.run runs the loop on this thread
    assert model.threads[0] == loop_thread and model.threads[1] != loop_thread
    assert model.asked == [loop_thread, loop_thread]
    np.testing.assert_array_equal(small.outputs[0].data, np.full(4, 2.0))
    np.testing.assert_array_equal(large.outputs[0].data, np.full(5, 2.0))
    # The statistics count it as any execution.
    assert endpoint.stats.inference_count == 2


def test_only_a_plain_predict_is_asked_about_the_loop(executor: Executor) -> None:
    class WithPreprocess(OnLoop):
        def preprocess(self, request: InferenceRequest) -> InferenceRequest:
            return request

    class AsyncPredict(OnLoop):
        async def predict(self, request: InferenceRequest):  # type: ignore[override]
            self.threads.append(threading.get_ident())
            return request.as_numpy() * 2

    loop_thread = threading.get_ident()
    with_preprocess, async_predict = WithPreprocess(), AsyncPredict()
    for model in (with_preprocess, async_predict):
        infer(ModelEndpoint(model, executor), request_of(np.ones(1)))
        assert model.asked == []
    # With a preprocess, predict runs on a model thread; an async predict on the loop, as ever.
    assert with_preprocess.threads[0] != loop_thread
    assert async_predict.threads[0] == loop_thread


def test_a_failure_on_the_loop_is_the_same_model_failure(executor: Executor) -> None:
    def explode(x):
        raise ValueError("weights are NaN")

    with pytest.raises(ModelFailure) as info:
        infer(ModelEndpoint(OnLoop(result=explode), executor), request_of(np.ones(1)))
    assert str(info.value) == "model 'doubler' failed: ValueError: weights are NaN"

    class Undecided(OnLoop):
        def runs_on_loop(self, request: InferenceRequest) -> bool:
            raise RuntimeError("cannot tell")

    with pytest.raises(ModelFailure, match="RuntimeError: cannot tell"):
        infer(ModelEndpoint(Undecided(), executor), request_of(np.ones(1)))


def test_an_answer_made_on_the_loop_leaves_a_loop_step_later(executor: Executor) -> None:
    """Requests that arrived together are all taken in before the first answer goes out."""
    endpoint = ModelEndpoint(OnLoop(), executor)
    order: list[str] = []

    async def one(name: str) -> None:
        order.append(f"in {name}")
        await endpoint.infer(request_of(np.ones(1)))
        order.append(f"out {name}")

    async def main() -> None:
        await asyncio.gather(one("a"), one("b"), one("c"))

    asyncio.run(main())
    assert order == ["in a", "in b", "in c", "out a", "out b", "out c"]


def test_a_batch_the_model_calls_cheap_runs_on_the_event_loop(executor: Executor) -> None:
    from shoal.serving.batcher import BatchSettings

    model = OnLoop(limit=8)
    endpoint = ModelEndpoint(model, executor, BatchSettings(8, 0.05))

    async def main() -> list[InferenceResponse]:
        return await asyncio.gather(
            *(endpoint.infer(request_of(np.full((1, 2), float(i)))) for i in range(4))
        )

    responses = asyncio.run(main())
    assert len(model.threads) == 1 and model.threads[0] == threading.get_ident()
    for i, response in enumerate(responses):
        np.testing.assert_array_equal(response.outputs[0].data, np.full((1, 2), 2.0 * i))


# -- failures -----------------------------------------------------------------------------


def test_predict_that_raises_is_a_model_failure(executor: Executor) -> None:
    def explode(x):
        raise ValueError("weights are NaN")

    with pytest.raises(ModelFailure) as info:
        infer(ModelEndpoint(Doubler(explode), executor), request_of(np.ones(1)))
    assert str(info.value) == "model 'doubler' failed: ValueError: weights are NaN"
    assert isinstance(info.value.__cause__, ValueError)


def test_shoal_errors_from_the_model_pass_through(executor: Executor) -> None:
    def refuse(x):
        raise InvalidInput("x must be positive")

    with pytest.raises(InvalidInput, match="x must be positive"):
        infer(ModelEndpoint(Doubler(refuse), executor), request_of(np.ones(1)))


def test_model_without_predict(executor: Executor) -> None:
    with pytest.raises(ModelFailure, match="NotImplementedError"):
        infer(ModelEndpoint(Model("bare"), executor), request_of(np.ones(1)))


def test_postprocess_must_return_a_response(executor: Executor) -> None:
    class Bad(Doubler):
        def postprocess(self, response):
            return {"oops": 1}

    with pytest.raises(ModelFailure, match="postprocess returned dict"):
        infer(ModelEndpoint(Bad(), executor), request_of(np.ones(1)))


def test_endpoint_that_is_not_ready(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(), executor)
    endpoint.state = ModelState.UNLOADING
    assert not endpoint.ready
    with pytest.raises(Unavailable, match="version 3 is not ready"):
        infer(endpoint, request_of(np.ones(1)))


# -- lifecycle stages and async models ----------------------------------------------------


class Staged(Model):
    def __init__(self) -> None:
        super().__init__("staged")
        self.calls: list[str] = []

    def preprocess(self, request):
        self.calls.append("preprocess")
        request.inputs[0] = Tensor.from_numpy("x", request.as_numpy() + 1)
        return request

    def predict(self, request):
        self.calls.append("predict")
        return {"y": request.as_numpy() * 10}

    def postprocess(self, response):
        self.calls.append("postprocess")
        response.outputs.append(Tensor.from_numpy("extra", np.array([True])))
        return response


def test_preprocess_and_postprocess_are_called_in_order(executor: Executor) -> None:
    model = Staged()
    response = infer(ModelEndpoint(model, executor), request_of(np.array([1, 2])))
    assert model.calls == ["preprocess", "predict", "postprocess"]
    assert response.output("y").data.tolist() == [20, 30]
    assert response.output("extra").datatype == "BOOL"


class AsyncModel(Model):
    def __init__(self) -> None:
        super().__init__("async", "1")
        self.predict_thread: int | None = None

    async def predict(self, request):
        self.predict_thread = threading.get_ident()
        await asyncio.sleep(0)
        return request.as_numpy() + 1


def test_async_predict(executor: Executor) -> None:
    model = AsyncModel()
    response = infer(ModelEndpoint(model, executor), request_of(np.array([1, 2])))
    assert response.outputs[0].data.tolist() == [2, 3]
    assert model.predict_thread == threading.get_ident()  # coroutines run on the loop


def test_async_predict_with_sync_stages_and_failure(executor: Executor) -> None:
    class Mixed(Staged):
        async def predict(self, request):
            self.calls.append("predict")
            await asyncio.sleep(0)
            return request.as_numpy() * 10

    model = Mixed()
    response = infer(ModelEndpoint(model, executor), request_of(np.array([1])))
    assert model.calls == ["preprocess", "predict", "postprocess"]
    assert [t.name for t in response.outputs] == [DEFAULT_OUTPUT, "extra"]
    assert response.outputs[0].data.tolist() == [20]

    class Failing(AsyncModel):
        async def predict(self, request):
            raise KeyError("missing")

    with pytest.raises(ModelFailure, match="model 'async' failed: KeyError"):
        infer(ModelEndpoint(Failing(), executor), request_of(np.ones(1)))


def test_async_preprocess(executor: Executor) -> None:
    class AsyncPre(Doubler):
        async def preprocess(self, request):
            return request_of(request.as_numpy() + 100)

    response = infer(ModelEndpoint(AsyncPre(), executor), request_of(np.array([1])))
    assert response.outputs[0].data.tolist() == [202]


def test_metadata_and_drained(executor: Executor) -> None:
    model = Doubler()
    model.inputs = [TensorSpec("x", "FP32", (-1, 4))]
    endpoint = ModelEndpoint(model, executor)
    assert endpoint.ready
    assert endpoint.metadata() == {
        "name": "doubler",
        "versions": ["3"],
        "platform": "custom",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
    }

    async def run() -> None:
        await asyncio.wait_for(endpoint.drained(), 1)

    asyncio.run(run())


def test_concurrent_requests(executor: Executor) -> None:
    endpoint = ModelEndpoint(Doubler(), executor)

    async def run() -> list[InferenceResponse]:
        return await asyncio.gather(
            *(endpoint.infer(request_of(np.array([float(i)]), id=str(i))) for i in range(8))
        )

    responses = asyncio.run(run())
    assert [r.id for r in responses] == [str(i) for i in range(8)]
    assert [r.outputs[0].data.tolist() for r in responses] == [[2.0 * i] for i in range(8)]
