"""Explaining an endpoint's predictions: :func:`explain`.

How a request is explained:

1. Its inputs are matched to the endpoint's declared inputs (as a prediction's are) and laid
   out as one feature matrix ``[rows, features]``: each input gives as many columns as one of
   its rows has values, in declared order (the order tabular runtimes stack them in). Inputs
   must be numeric (not BYTES) and share their first dimension (the rows).
2. The method: ``auto`` takes tree SHAP when the endpoint's model is a tree ensemble held in
   this process, linear SHAP for a linear model, permutation otherwise (see
   :mod:`shoal.explain.methods` for what each explains). A model in worker processes
   (``--workers``) has no estimator here: it is explained by permutation through its endpoint,
   and the answer's ``note`` says so.
3. The model's own prediction of the rows, for the explained output, comes from the endpoint.
4. The model-agnostic methods run shap on a worker thread; each batch of perturbed rows shap
   evaluates is sent to the endpoint's ``infer`` on the event loop
   (``asyncio.run_coroutine_threadsafe``) in chunks of :data:`CHUNK_ROWS` rows, at most
   :data:`CALL_CONCURRENCY` at once: batching, worker processes, in-flight limits and per-call
   timeouts apply as to any request, and predictions of other clients interleave with them.
5. Tree and linear SHAP run on a worker thread too (shap is imported there on first use, never
   at server start), and their sums are checked against the model's prediction: values that
   do not add up fall back to permutation under ``auto`` (and are a 400 otherwise).

The whole explanation must finish within ``timeout`` (else the endpoint's own ``timeout``);
past it the answer is 504 and shap's thread stops at its next model call.
"""

from __future__ import annotations

import asyncio
import functools
import concurrent.futures
import math
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..datatypes import numpy_dtype
from ..errors import DeadlineExceeded, InvalidInput, Overloaded, ShoalError
from ..serving.endpoint import conform_inputs
from ..types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor, TensorSpec
from . import background as backgrounds
from . import methods
from .config import ExplainerConfig
from .metrics import ExplainMetrics

#: Rows per model call the model-agnostic methods make (shap asks for thousands at once).
CHUNK_ROWS = 1024
#: Model calls one explanation keeps in flight at once.
CALL_CONCURRENCY = 2
#: Rows sampled from requests that serve as background when model.yaml does not ask for them.
MIN_SAMPLED_ROWS = 10
ATTRIBUTIONS = "attributions"
BASE_VALUES = "base_values"
AGNOSTIC = ("permutation", "kernel", "exact")
TREE_PLATFORMS = ("sklearn", "xgboost", "lightgbm", "catboost")


class _Stopped(Exception):
    """The explanation was abandoned (timeout, client gone): shap's thread ends here."""


class _Fallback(Exception):
    """Tree or linear SHAP cannot explain this model after all; auto falls back to permutation."""


@dataclass(frozen=True)
class _Column:
    name: str
    datatype: str
    tail: tuple[int, ...]

    @property
    def width(self) -> int:
        return math.prod(self.tail)


class Layout:
    """How a request's inputs map to feature columns, and back."""

    def __init__(self, columns: list[_Column]) -> None:
        self.columns = columns
        self.features = sum(c.width for c in columns)

    def matrix(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        rows = len(next(iter(arrays.values())))
        return np.concatenate(
            [np.asarray(arrays[c.name]).reshape(rows, c.width).astype(np.float64) for c in self.columns],
            axis=1,
        )

    def tensors(self, x: np.ndarray) -> list[Tensor]:
        tensors, start = [], 0
        rows = len(x)
        for c in self.columns:
            data = x[:, start : start + c.width].reshape(rows, *c.tail).astype(numpy_dtype(c.datatype))
            tensors.append(Tensor(c.name, c.datatype, data.shape, data))
            start += c.width
        return tensors

    def default_names(self) -> list[str]:
        names: list[str] = []
        for c in self.columns:
            if c.width == 1 and len(self.columns) > 1:
                names.append(c.name)
            else:
                names.extend(f"{c.name}[{j}]" for j in range(c.width))
        return names

    def fits(self, arrays: dict[str, np.ndarray]) -> bool:
        return all(c.name in arrays and arrays[c.name].shape[1:] == c.tail for c in self.columns)

    @property
    def dtype(self) -> Any:
        """The one numpy dtype of every input (FP32 for XGBoost, ...), else FP64."""
        kinds = {c.datatype for c in self.columns}
        return numpy_dtype(kinds.pop()) if len(kinds) == 1 else np.float64


@dataclass
class _State:
    """What explaining one endpoint keeps between requests."""

    file: backgrounds.BackgroundFile | None = None
    explainers: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    run_lock: threading.Lock = field(default_factory=threading.Lock)


_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(endpoint: Any) -> _State:
    try:
        state = _states.get(endpoint)
        if state is None:
            state = _states[endpoint] = _State()
        return state
    except TypeError:  # not weak-referenceable: nothing kept
        return _State()


@dataclass
class _Plan:
    method: str
    estimator: methods.Estimator | None = None
    note: str | None = None


async def explain(
    endpoint: Any,
    request: InferenceRequest,
    config: ExplainerConfig | None = None,
    *,
    max_rows: int | None = None,
    timeout: float | None = None,
    metrics: ExplainMetrics | None = None,
    folder: Path | None = None,
) -> InferenceResponse:
    """See :func:`shoal.explain.explain`."""
    config = config or ExplainerConfig()
    if folder is not None and config.folder is None:
        config = config.model_copy()
        try:
            config.bind(Path(folder))
        except ValueError as exc:
            raise InvalidInput(f"explainer: {exc}") from None
    global _running
    if _running >= MAX_CONCURRENT:
        raise Overloaded(f"{MAX_CONCURRENT} explanations are running; retry shortly")
    job = _Explanation(endpoint, request, config, max_rows)
    limit = timeout if timeout is not None else _own_timeout(endpoint)
    started = time.perf_counter()
    outcome = "success"
    _running += 1
    try:
        await job.prepare()
        if not limit:
            return await job.run()
        job.deadline_at = time.monotonic() + limit
        try:
            return await asyncio.wait_for(job.run(), limit)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"explaining {job.kind} {endpoint.name!r} took longer than {limit:g} s; explain fewer "
                "rows, lower explainer.max_evals, or allow a longer timeout"
            ) from None
    except ShoalError as exc:
        outcome = str(exc.http_status)
        raise
    except asyncio.CancelledError:
        outcome = "499"
        raise
    except BaseException:
        outcome = "500"
        raise
    finally:
        _running -= 1
        job.stopped.set()
        if metrics is not None:
            metrics.observed(endpoint.name, job.plan.method, outcome, time.perf_counter() - started)


def _own_timeout(endpoint: Any) -> float | None:
    limits = getattr(endpoint, "limits", None)
    value = getattr(limits, "timeout", None) if limits is not None else getattr(endpoint, "timeout", None)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


class _Explanation:
    def __init__(
        self, endpoint: Any, request: InferenceRequest, config: ExplainerConfig, max_rows: int | None
    ) -> None:
        self.endpoint = endpoint
        self.name: str = endpoint.name
        self.request = request
        self.config = config
        self.max_rows = max_rows if max_rows is not None else config.max_rows
        self.plan = _Plan(config.method)
        self.deadline_at: float | None = None
        self.background: tuple[np.ndarray | None, str, Any] | None = None
        self.stopped = threading.Event()
        self.state = _state(endpoint)
        metadata = endpoint.metadata()
        self.platform: str = str(metadata.get("platform", ""))
        self.kind = "graph" if self.platform == "graph" else "model"
        self.input_specs = [
            TensorSpec(s["name"], s["datatype"], tuple(s["shape"])) for s in metadata.get("inputs", [])
        ]
        self.output_names = [s["name"] for s in metadata.get("outputs", [])]

    # -- the steps -----------------------------------------------------------------------

    async def prepare(self) -> None:
        """What does not count against the timeout: checking the request, choosing the
        method, importing shap and (first time in the process) compiling its code."""
        inputs, self.layout, self.rows = self._inputs()
        self.inputs = inputs
        self.x = self.layout.matrix({t.name: t.data for t in inputs})
        self.feature_names = await self._feature_names()
        if not methods.imported():
            await _off_loop(methods.import_shap)  # seconds: off the loop
        self.plan = self._choose()
        if self.plan.method in AGNOSTIC:
            self.background = await self._background(required=True)  # a 400 before compiling
            await _off_loop(methods.warm_up)

    async def run(self) -> InferenceResponse:
        result: methods.Result | None = None
        if self.plan.method in ("tree", "linear"):
            try:
                result, prediction, described = await self._in_process()
            except _Fallback as exc:
                self.plan = _Plan("permutation", note=str(exc))
                await _off_loop(methods.warm_up)
        if result is None:
            result, prediction, described = await self._agnostic()
        return self._response(result, prediction, described)

    def _inputs(self) -> tuple[list[Tensor], Layout, int]:
        given = list(self.request.inputs)
        if not given:
            raise InvalidInput("the explain request has no inputs")
        inputs = conform_inputs(given, self.input_specs, self.name, self.kind)
        if self.input_specs and len(inputs) > 1:
            by_name = {t.name: t for t in inputs}
            inputs = [by_name[s.name] for s in self.input_specs if s.name in by_name]
        rows = {t.shape[0] if t.shape else None for t in inputs}
        for t in inputs:
            if t.datatype == "BYTES":
                raise InvalidInput(
                    f"input {t.name!r} is BYTES: explanations attribute a prediction to numeric "
                    "feature columns, so every input must be numeric"
                )
            if not t.shape:
                raise InvalidInput(f"input {t.name!r} is a scalar: explain takes rows ([rows, features])")
        if len(rows) != 1:
            raise InvalidInput(
                "the inputs of an explain request must have the same number of rows (their "
                f"first dimension), not {sorted(r for r in rows if r is not None)}"
            )
        count = rows.pop() or 0
        if not count:
            raise InvalidInput("the explain request has no rows to explain")
        if count > self.max_rows:
            raise InvalidInput(
                f"an explain request of model {self.name!r} may carry at most {self.max_rows} rows "
                f"(explainer.max_rows), not {count}: split it"
            )
        layout = Layout([_Column(t.name, t.datatype, tuple(t.shape[1:])) for t in inputs])
        if not layout.features:
            raise InvalidInput("the explain request's inputs have no feature columns")
        return inputs, layout, count

    async def _feature_names(self) -> list[str]:
        wanted = self.config.feature_names
        if wanted is not None:
            if len(wanted) != self.layout.features:
                raise InvalidInput(
                    f"explainer.feature_names has {len(wanted)} names, but model {self.name!r} "
                    f"takes {self.layout.features} features"
                )
            return list(wanted)
        if self.config.background_path is not None:
            file = await self._file()
            if file.columns and len(file.columns) == self.layout.features:
                return list(file.columns)
        return self.layout.default_names()

    def _choose(self) -> _Plan:
        requested = self.config.method
        model = getattr(self.endpoint, "model", None)
        estimator = methods.find_estimator(model) if model is not None else None
        in_workers = model is not None and _in_workers(model)
        output = self.config.output
        if requested in AGNOSTIC:
            plan = _Plan(requested)
        elif estimator is not None and requested in ("auto", estimator.kind):
            if output is None or output == estimator.output:
                plan = _Plan(estimator.kind, estimator)
            elif requested == "auto":
                plan = _Plan("permutation", note=(
                    f"{estimator.kind} SHAP explains {estimator.output} of this model; "
                    f"{output} is explained by permutation"
                ))
            else:
                raise InvalidInput(
                    f"method {requested} explains {estimator.output} of model {self.name!r} "
                    f"({estimator.description}), not {output}: set explainer.output to "
                    f"{estimator.output}, or method: permutation to explain {output}"
                )
        elif in_workers and (requested != "auto" or self.platform in TREE_PLATFORMS):
            plan = _Plan("permutation", note=(
                f"the model runs in worker processes, where {'tree or linear' if requested == 'auto' else requested} "
                "SHAP cannot reach it: explained by permutation through its endpoint"
            ))
        elif requested == "auto":
            plan = _Plan("permutation")
        else:
            needs = (
                "a tree ensemble (scikit-learn forests and gradient boosting, XGBoost, LightGBM, "
                "CatBoost)" if requested == "tree" else
                "a linear model (scikit-learn linear_model, linear SVMs)"
            )
            what = estimator.description if estimator is not None else f"a {self.platform or 'custom'} {self.kind}"
            raise InvalidInput(
                f"method {requested} needs {needs}; {self.kind} {self.name!r} is {what}: use "
                "method permutation (or auto)"
            )
        if plan.method == "exact" and self.layout.features > methods.EXACT_MAX_FEATURES:
            raise InvalidInput(
                f"method exact evaluates 2^features coalitions, and model {self.name!r} takes "
                f"{self.layout.features} features (at most {methods.EXACT_MAX_FEATURES}): use "
                "method permutation"
            )
        return plan

    # -- tree and linear SHAP, on the estimator in this process ----------------------------

    async def _in_process(self) -> tuple[methods.Result, Tensor, str]:
        plan = self.plan
        estimator = plan.estimator
        assert estimator is not None
        # The model's own prediction, while shap computes (a thread each).
        predicting = asyncio.ensure_future(self._prediction(estimator.output))
        try:
            data, described, key = await self._background(required=plan.method == "linear")
            cache_key = (plan.method, key) if key is not None else None

            def work() -> methods.Result:
                with self.state.run_lock:
                    explainer = self.state.explainers.get(cache_key) if cache_key else None
                    if explainer is None:
                        if plan.method == "tree":
                            explainer = methods.tree_explainer(estimator.obj, data)
                        else:
                            explainer = methods.linear_explainer(estimator.obj, data)
                        if cache_key is not None:
                            self.state.explainers = {cache_key: explainer}
                    if plan.method == "tree":
                        return methods.run_tree(explainer, self.x, self.layout.dtype)
                    return methods.run_linear(explainer, self.x)

            try:
                result = await _off_loop(work)
            except ShoalError:
                raise
            except Exception as exc:
                problem = f"{plan.method} SHAP failed for {estimator.description}: {type(exc).__name__}: {exc}"
                if self.config.method == "auto":
                    raise _Fallback(f"{problem}; explained by permutation instead") from None
                raise InvalidInput(f"{problem}; use method permutation (or auto)") from None
            prediction = await predicting
        finally:
            if not predicting.done():
                predicting.cancel()
            elif not predicting.cancelled():
                predicting.exception()  # retrieved: the error that counts was raised above
        if not _adds_up(result, prediction.data):
            problem = (
                f"{plan.method} SHAP values of {estimator.description} do not add up to its "
                f"output {estimator.output}"
            )
            if self.config.method == "auto":
                raise _Fallback(f"{problem}; explained by permutation instead")
            raise InvalidInput(f"{problem}; use method permutation (or auto)")
        return result, prediction, described

    # -- the model-agnostic methods, through the endpoint ------------------------------------

    async def _agnostic(self) -> tuple[methods.Result, Tensor, str]:
        wanted = self.config.output
        if wanted is None and "predict_proba" in self.output_names:
            wanted = "predict_proba"
        if wanted is not None and self.output_names and wanted not in self.output_names:
            raise InvalidInput(
                f"explainer.output {wanted!r} is not an output of {self.kind} {self.name!r}; it "
                f"has {self.output_names}"
            )
        prediction = await self._prediction(wanted)
        output = prediction.name
        if self.background is None:
            self.background = await self._background(required=True)
        data, described, _ = self.background
        assert data is not None
        method = self.plan.method
        evals = self.config.max_evals
        if method == "permutation":
            evals = max(evals, 2 * self.layout.features + 1)
        self.max_evals = evals
        loop = asyncio.get_running_loop()
        predict = self._predictor(output, loop)
        try:
            result = await _off_loop(methods.run_agnostic, method, predict, self.x, data, evals)
        except (ShoalError, _Stopped):
            raise
        except Exception as exc:
            raise InvalidInput(
                f"the {method} explainer failed for {self.kind} {self.name!r}: {type(exc).__name__}: {exc}"
            ) from None
        return result, prediction, described

    def _predictor(self, output: str, loop: asyncio.AbstractEventLoop) -> Callable[[np.ndarray], np.ndarray]:
        """What shap calls (on its thread) to evaluate rows: the endpoint, on the loop."""

        def predict(z: np.ndarray) -> np.ndarray:
            if self.stopped.is_set():
                raise _Stopped()
            future = asyncio.run_coroutine_threadsafe(self._evaluate(np.asarray(z), output), loop)
            while True:
                try:
                    return future.result(timeout=0.25)
                except concurrent.futures.TimeoutError:
                    if self.stopped.is_set():
                        future.cancel()
                        raise _Stopped() from None
                except concurrent.futures.CancelledError:
                    raise _Stopped() from None

        return predict

    async def _evaluate(self, z: np.ndarray, output: str) -> np.ndarray:
        if len(z) <= CHUNK_ROWS:
            return _values(await self._call(self.layout.tensors(z), output, len(z)))
        gate = asyncio.Semaphore(self._concurrency())

        async def one(part: np.ndarray) -> np.ndarray:
            async with gate:
                return _values(await self._call(self.layout.tensors(part), output, len(part)))

        size = -(-len(z) // -(-len(z) // CHUNK_ROWS))  # even chunks of at most CHUNK_ROWS
        tasks = [asyncio.ensure_future(one(z[i : i + size])) for i in range(0, len(z), size)]
        try:
            return np.concatenate(await asyncio.gather(*tasks))
        finally:
            for task in tasks:
                task.cancel()

    def _concurrency(self) -> int:
        limit = getattr(getattr(self.endpoint, "limits", None), "max_inflight", 0) or 0
        return max(1, min(CALL_CONCURRENCY, limit // 2)) if limit else CALL_CONCURRENCY

    async def _prediction(self, output: str | None) -> Tensor:
        """The model's own prediction of the rows: ``output``, or (None) its first output that
        has a number (or a row of numbers) per row."""
        return await self._call(list(self.inputs), output, self.rows, self.request.id)

    async def _call(
        self, tensors: list[Tensor], output: str | None, rows: int, request_id: str | None = None
    ) -> Tensor:
        request = InferenceRequest(
            tensors,
            id=request_id,
            parameters=dict(self.request.parameters),
            outputs=[RequestedOutput(output)] if output is not None else None,
            model_name=self.name,
            model_version=getattr(self.endpoint, "version", None),
        )
        remaining = None
        if self.deadline_at is not None:
            remaining = max(0.001, self.deadline_at - time.monotonic())
        response = await self.endpoint.infer(request, timeout=None, deadline=remaining)
        return self._explained(response, output, rows)

    def _explained(self, response: InferenceResponse, output: str | None, rows: int) -> Tensor:
        if output is not None:
            found = [t for t in response.outputs if t.name == output]
            if not found:
                raise InvalidInput(
                    f"{self.kind} {self.name!r} did not return output {output!r} (it returned "
                    f"{[t.name for t in response.outputs]}): set explainer.output"
                )
            tensor = found[0]
        else:
            usable = [t for t in response.outputs if _per_row_numbers(t, rows)]
            if not usable:
                raise InvalidInput(
                    f"{self.kind} {self.name!r} returned no numeric output with a value per row to "
                    f"explain (it returned {[(t.name, t.datatype) for t in response.outputs]}): "
                    "set explainer.output to one"
                )
            tensor = usable[0]
        if not _per_row_numbers(tensor, rows):
            raise InvalidInput(
                f"output {tensor.name!r} of {self.kind} {self.name!r} is {tensor.datatype} "
                f"{list(tensor.shape)}; explanations need numbers, [rows] or [rows, outputs] "
                f"({rows} rows): set explainer.output to such an output (predict_proba, "
                "predict_raw, ...)"
            )
        return tensor

    # -- background data ---------------------------------------------------------------------

    async def _file(self) -> backgrounds.BackgroundFile:
        path = self.config.background_path
        assert path is not None
        cached = self.state.file
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise InvalidInput(f"explainer.background {path.name}: cannot read it: {exc.strerror}") from None
        if cached is None or cached.path != path or cached.mtime_ns != mtime:
            cached = self.state.file = await _off_loop(backgrounds.read_background, path)
            self.state.explainers = {}
        return cached

    async def _background(self, required: bool) -> tuple[np.ndarray | None, str, Any]:
        """The background matrix, what it is (for the answer), and a key to cache explainers
        by (None: do not cache: it changes)."""
        config = self.config
        if isinstance(config.background, str):
            if config.background_path is None:
                raise InvalidInput(
                    f"explainer.background {config.background!r} is relative, and no model folder "
                    "is known to read it from"
                )
            file = await self._file()
            if file.data.shape[1] != self.layout.features:
                raise InvalidInput(
                    f"explainer.background {file.path.name} has {file.data.shape[1]} columns, but "
                    f"{self.kind} {self.name!r} takes {self.layout.features} features"
                )
            data = methods.cap_rows(file.data)
            return data, _rows(f"file {file.path.name}", len(data), len(file.data)), ("file", file.mtime_ns)
        sample = backgrounds.sampled(self.name)
        if sample and self.layout.fits(sample):
            count = len(next(iter(sample.values())))
            if config.sampled_rows or (required and count >= MIN_SAMPLED_ROWS):
                data = methods.cap_rows(self.layout.matrix(sample))
                return data, _rows("rows sampled from requests", len(data), count), None
        if not required:
            return None, "none (tree path-dependent)", ("none",)
        if self.rows >= backgrounds.MIN_REQUEST_ROWS:
            data = methods.cap_rows(self.x)
            return data, _rows("the request's rows", len(data), self.rows), None
        where = (
            "set explainer.background in its model.yaml to a file of typical rows "
            "(background.npy, .csv or .parquet in the model's folder) or to {rows: 100} to "
            "sample the requests it answers, or "
            if self.kind == "model" else "explain the models it calls instead, or "
        )
        raise InvalidInput(
            f"{self.plan.method} SHAP needs background data (typical rows to compare with), and "
            f"{self.kind} {self.name!r} has none: {where}explain at least "
            f"{backgrounds.MIN_REQUEST_ROWS} rows at once (they serve as their own background)"
        )

    # -- the answer ------------------------------------------------------------------------

    def _response(self, result: methods.Result, prediction: Tensor, described: str) -> InferenceResponse:
        values, base = result.values, result.base_values
        predicted = np.asarray(prediction.data)
        if values.ndim == 3 and predicted.ndim == 1 and values.shape[2] == 1:
            values, base = values[:, :, 0], base.reshape(len(base), -1)[:, 0]
        name = prediction.name
        if name in (ATTRIBUTIONS, BASE_VALUES):
            name = "prediction"
        parameters: dict[str, Any] = {
            "method": self.plan.method,
            "feature_names": list(self.feature_names),
            "inputs": [c.name for c in self.layout.columns],
            "output": prediction.name,
            "background": described,
        }
        if self.plan.method in ("permutation", "kernel"):
            parameters["max_evals"] = self.max_evals
        if self.plan.note:
            parameters["note"] = self.plan.note
        values = np.ascontiguousarray(values, dtype=np.float64)
        base = np.ascontiguousarray(base, dtype=np.float64)
        return InferenceResponse(
            [
                Tensor(ATTRIBUTIONS, "FP64", values.shape, values),
                Tensor(BASE_VALUES, "FP64", base.shape, base),
                Tensor(name, prediction.datatype, prediction.shape, prediction.data, prediction.parameters),
            ],
            model_name=self.name,
            model_version=getattr(self.endpoint, "version", None),
            id=self.request.id,
            parameters=parameters,
        )


def _in_workers(model: Any) -> bool:
    from ..serving.workers.proxy import ProcessModel, ReplicatedModel

    return isinstance(model, (ProcessModel, ReplicatedModel))


def _per_row_numbers(tensor: Tensor, rows: int) -> bool:
    data = np.asarray(tensor.data)
    return (
        tensor.datatype != "BYTES" and data.dtype.kind in "biuf" and data.ndim in (1, 2)
        and data.shape[0] == rows
    )


def _values(tensor: Tensor) -> np.ndarray:
    return np.asarray(tensor.data, dtype=np.float64)


def _rows(what: str, used: int, total: int) -> str:
    return f"{what} ({used} rows)" if used == total else f"{what} ({used} of {total} rows)"


def _adds_up(result: methods.Result, predicted: np.ndarray) -> bool:
    """Whether sum(attributions) + base_value is the model's prediction (float32 models lose
    a few ulps on the way)."""
    total = result.values.sum(axis=1) + result.base_values
    predicted = np.asarray(predicted, dtype=np.float64)
    if predicted.size != total.size:
        return False
    predicted = predicted.reshape(total.shape)
    scale = max(1.0, float(np.max(np.abs(predicted))))
    return bool(np.allclose(total, predicted, rtol=1e-5, atol=1e-6 * scale))


#: Explanations running at once in this process; beyond it, 503 + Retry-After.
MAX_CONCURRENT = 4
_pool: Any = None
_running = 0


async def _off_loop(function: Any, *args: Any) -> Any:
    """Run shap's work on the explainers' own threads, never the loop's default pool (which
    the server needs for worker process bookkeeping and repository scans)."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(MAX_CONCURRENT + 1, thread_name_prefix="shoal-explain")
    return await asyncio.get_running_loop().run_in_executor(_pool, functools.partial(function, *args))
