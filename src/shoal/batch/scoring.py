"""Scoring one batch through an endpoint, narrowing a failure down to the rows at fault.

A batch the endpoint refuses (a value the model's inputs do not take) or fails on (the model
raised) is split in two and each half is tried again, down to single rows: the good rows still
score and each bad row is reported with the endpoint's own message. A row is scored the same
whether it went with its whole batch, with half of it or alone, as long as the model answers
each row on its own (every runtime Shoal ships does). Errors that are no row's fault (a server
that is down after its retries, a model that answers the wrong number of rows) fail the job.

Through a running server, only an answer that is about the request's input is narrowed down
(HTTP 400 or 422, gRPC INVALID_ARGUMENT or OUT_OF_RANGE, or a value the client cannot encode):
a 500, 502, 401, 403, 408 or a gRPC INTERNAL or UNKNOWN is the server's or the model's failure,
not a row's, and fails the job with the server's message, recording no bad row. An overloaded
model (429, RESOURCE_EXHAUSTED) is tried again a few times, with growing pauses, first. And a
batch (of 4 rows or more) whose every row makes the model fail alone, each with the same
message, fails the job too: that is a broken model, not a file of bad rows (rows the model
refuses as input, each with the same reason, stay bad rows).

A graph whose routers decide per request (switch, splitter, bandit, custom router) gets one
row per request, so that each row is routed on its own and never by its neighbours.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field

import numpy as np

from ..datatypes import datatype_of
from ..errors import InvalidInput, ModelFailure, Overloaded, PayloadTooLarge, ShoalError
from ..types import InferenceRequest, RequestedOutput, Tensor

#: Rows of a row-by-row batch in flight at once.
ROW_CONCURRENCY = 16
#: Errors a batch can be narrowed down for: a row's own input or the model failing on it.
ROW_ERRORS = (InvalidInput, ModelFailure)
#: A remote server's answer as the remote client words it: ``<where> answered 500: ...``.
_ANSWERED = re.compile(r" answered (\d{3}|[A-Z_]+): ")
#: A remote server's answers that are about the request's input.
INPUT_ANSWERS = frozenset({"400", "422", "INVALID_ARGUMENT", "OUT_OF_RANGE"})
#: Tries of a batch an overloaded model turns away, and the first pause between them (s).
OVERLOADED_TRIES = 5
OVERLOADED_PAUSE_S = 0.5
#: A batch of at least this many rows whose every row fails alone with the same model failure
#: (not a refused input) fails the job: a broken model, not a batch of bad rows.
SYSTEMATIC_ROWS = 4


def is_row_error(exc: ShoalError, remote: bool = False) -> bool:
    """Whether ``exc`` can be a row's fault (and its batch worth narrowing down)."""
    if not isinstance(exc, ROW_ERRORS):
        return False
    answered = _ANSWERED.search(exc.message)
    if answered is not None:  # a remote server's answer (a server, or a graph's remote node)
        return isinstance(exc, InvalidInput) and answered.group(1) in INPUT_ANSWERS
    # A remote's answer Shoal could not read is no row's fault; a value the client could not
    # encode is.
    return isinstance(exc, InvalidInput) if remote else True


class JobError(ShoalError):
    """A failure that is no single row's fault: the job stops."""


@dataclass
class Scored:
    kept: np.ndarray
    """Positions (in the tensors given) of the rows that scored, in order."""
    outputs: list[Tensor]
    """The outputs of those rows, in the same order."""
    errors: dict[int, str] = field(default_factory=dict)
    """Position -> the endpoint's message for a row that did not score."""


@dataclass
class _Part:
    start: int
    stop: int
    outputs: list[Tensor]


class Scorer:
    def __init__(
        self, endpoint: object, name: str, outputs: list[str] | None = None, row_wise: bool = False,
        remote: bool = False,
    ) -> None:
        self.endpoint = endpoint
        self.name = name
        self.outputs = outputs
        self.row_wise = row_wise
        self.remote = remote
        """The endpoint is a running server (only its input errors are a row's)."""

    async def score(self, tensors: list[Tensor], rows: int) -> Scored:
        if rows == 0:
            return Scored(np.arange(0), [])
        if self.row_wise:
            limit = asyncio.Semaphore(ROW_CONCURRENCY)

            async def one(row: int) -> list[_Part | tuple[int, str, bool]]:
                async with limit:
                    return await self._range(tensors, row, row + 1)

            found = [item for items in await asyncio.gather(*(one(r) for r in range(rows))) for item in items]
        else:
            found = await self._range(tensors, 0, rows)
        parts = [p for p in found if isinstance(p, _Part)]
        failed = [p for p in found if not isinstance(p, _Part)]
        errors = {p[0]: p[1] for p in failed}
        if not parts:
            messages = set(errors.values())
            if (rows >= SYSTEMATIC_ROWS and len(messages) == 1
                    and not any(p[2] for p in failed)):
                raise JobError(f"model {self.name!r} failed on each of {rows} rows alone, with the "
                               f"same error (not a row's fault): {messages.pop()}")
            return Scored(np.arange(0), [], errors)
        kept = np.concatenate([np.arange(p.start, p.stop) for p in parts])
        if len(parts) == 1:
            return Scored(kept, parts[0].outputs, errors)
        return Scored(kept, _concatenate([p.outputs for p in parts]), errors)

    async def _range(
        self, tensors: list[Tensor], start: int, stop: int,
    ) -> list[_Part | tuple[int, str, bool]]:
        request = InferenceRequest(
            [_rows(t, start, stop) for t in tensors], model_name=self.name,
            outputs=[RequestedOutput(o) for o in self.outputs] if self.outputs else None,
        )
        try:
            response = await self._infer(request)
        except ROW_ERRORS as exc:
            if not is_row_error(exc, self.remote):
                raise JobError(f"model {self.name!r}: {exc.message}") from exc
            if stop - start == 1:
                return [(start, exc.message, isinstance(exc, InvalidInput))]
            middle = (start + stop) // 2
            return await self._range(tensors, start, middle) + await self._range(tensors, middle, stop)
        except PayloadTooLarge as exc:
            raise JobError(f"model {self.name!r}: {exc.message} (a smaller --batch-size sends "
                           "smaller requests)") from exc
        except ShoalError as exc:
            raise JobError(f"model {self.name!r}: {exc.message}") from exc
        return [_Part(start, stop, self._checked(response.outputs, stop - start))]

    async def _infer(self, request: InferenceRequest) -> object:
        """The endpoint's answer; an overloaded model is asked again after a pause (doubling),
        a few times, before its Overloaded goes up."""
        tries = 0
        while True:
            try:
                return await self.endpoint.infer(request)  # type: ignore[attr-defined]
            except Overloaded as exc:
                tries += 1
                if tries >= OVERLOADED_TRIES:
                    exc.message += f" (after {tries} tries)"
                    raise
            await asyncio.sleep(OVERLOADED_PAUSE_S * 2 ** (tries - 1))

    def _checked(self, outputs: list[Tensor], rows: int) -> list[Tensor]:
        checked = []
        for tensor in outputs:
            shape = tuple(tensor.shape)
            data = tensor.data
            if data.shape != shape and data.size == int(np.prod(shape)):
                data = data.reshape(shape)  # decoders may hand the values over flat
            if not shape or shape[0] != rows:
                raise JobError(
                    f"model {self.name!r} answered {rows} row(s) with output {tensor.name!r} of "
                    f"shape {list(shape)}: batch scoring needs one output row per input row"
                )
            checked.append(Tensor(tensor.name, tensor.datatype, shape, data, tensor.parameters))
        return checked


def _rows(tensor: Tensor, start: int, stop: int) -> Tensor:
    if start == 0 and stop == tensor.shape[0]:
        return tensor
    data = tensor.data[start:stop]
    return Tensor(tensor.name, tensor.datatype, (stop - start, *tensor.shape[1:]), data, tensor.parameters)


def _concatenate(groups: list[list[Tensor]]) -> list[Tensor]:
    merged = []
    for tensor in groups[0]:
        pieces = []
        for group in groups:
            match = next((t for t in group if t.name == tensor.name), None)
            if match is None:
                raise JobError(f"output {tensor.name!r} is missing from some of the model's answers")
            pieces.append(match.data)
        data = np.concatenate(pieces, axis=0)
        datatype = tensor.datatype if data.dtype == tensor.data.dtype else datatype_of(data)
        merged.append(Tensor(tensor.name, datatype, tuple(data.shape), data, tensor.parameters))
    return merged
