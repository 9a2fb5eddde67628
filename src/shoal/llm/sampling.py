"""Choosing each sequence's next token from one step's logits.

Per row, in the order ``generate`` applies its processors:

1. **repetition penalty** (``repetition_penalty != 1``, greedy or not; transformers'
   ``RepetitionPenaltyLogitsProcessor``): every token of the sequence so far (prompt and
   generated, kept as a boolean mask over the vocabulary, :attr:`Sampling.seen`) has its logit
   divided by the penalty, or multiplied when the logit is negative;
2. **greedy** (``temperature`` below 1e-5): ``argmax``, for all plain greedy rows at once;
3. **sampling**, one row at a time as ``generate(do_sample=True)`` does it: ``logits /
   temperature`` (``TemperatureLogitsWarper``), ``top_k`` (``TopKLogitsWarper``: below the k-th
   largest score is dropped), ``top_p`` (``TopPLogitsWarper``'s algorithm: sort ascending, drop
   the tokens whose cumulative probability is at most ``1 - top_p``, always keep the most
   likely), ``softmax``, ``torch.multinomial(probs, 1, generator=...)`` with the sequence's own
   ``torch.Generator``. One row at a time with its own generator makes a seeded sequence's draws
   independent of what else is in the batch, and equal to ``generate`` after
   ``torch.manual_seed(seed)`` (which draws from the default generator in the same order).

**A bad row fails alone**: a row whose logits hold NaN (or no finite maximum), or whose
probabilities are not finite, gets an exception in its place in :func:`choose`'s answer; the
other rows get their tokens.

**Log-probabilities** are those of the model's **raw** distribution, ``log_softmax(logits)``
at temperature 1 and before the repetition penalty, top_k and top_p: what vLLM reports by
default (its ``raw_logprobs`` mode) and what OpenAI's documentation describes (the log
probability of the token under the model). They do not change with the sampling settings, so a
greedy and a sampled request report the same number for the same token in the same context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Choice:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


class BadLogits(ValueError):
    """A row's logits (or probabilities) are not usable: NaN, or no finite maximum."""


@dataclass
class Sampling:
    """One sequence's sampling state (made at its prefill)."""

    greedy: bool
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    generator: torch.Generator | None = None
    logprobs: int | None = None
    #: bool [vocab]: the tokens of the sequence so far, when ``repetition_penalty != 1``.
    seen: torch.Tensor | None = None

    @property
    def plain_greedy(self) -> bool:
        return self.greedy and self.seen is None

    def start_seen(self, prompt: list[int], vocab: int, device: torch.device) -> None:
        """The penalty's mask, from the prompt (``vocab``: the logits' width; ids beyond it
        cannot be generated and are left out, as transformers does)."""
        if self.repetition_penalty == 1.0:
            return
        self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
        ids = [t for t in prompt if 0 <= t < vocab]
        if ids:
            self.seen[torch.tensor(ids, dtype=torch.long, device=device)] = True

    def saw(self, token: int) -> None:
        if self.seen is not None and 0 <= token < self.seen.shape[0]:
            self.seen[token] = True


def repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``scores`` [1, vocab] with the ``seen`` tokens penalized (``RepetitionPenaltyLogitsProcessor``)."""
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[None, :], penalized, scores)


def top_k_filter(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    """``scores`` [rows, vocab] with the tokens below the ``top_k``-th largest set to -inf."""
    top_k = min(top_k, scores.size(-1))
    remove = scores < torch.topk(scores, top_k)[0][..., -1, None]
    return scores.masked_fill(remove, -float("inf"))


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """``scores`` [rows, vocab] with the tokens outside the nucleus set to -inf."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = 0
    remove = remove.scatter(1, sorted_indices, remove)
    return scores.masked_fill(remove, -float("inf"))


def _argmax(scores: torch.Tensor) -> list[int | None]:
    """Per row of ``scores``: the argmax, or None when the row has NaN or no finite maximum
    (``max`` propagates NaN; its index is the first maximum, as ``argmax``'s)."""
    values, indices = scores.max(dim=-1)
    finite = torch.isfinite(values).tolist()
    return [int(i) if ok else None for i, ok in zip(indices.tolist(), finite)]


def _one(row: torch.Tensor, s: Sampling) -> int:
    scores = row
    if s.seen is not None:
        scores = repetition_penalty(scores, s.seen, s.repetition_penalty)
    if s.greedy:
        token = _argmax(scores)[0]
        if token is None:
            raise BadLogits("the model's logits are NaN or infinite")
        return token
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k > 0:
        scores = top_k_filter(scores, s.top_k)
    if s.top_p < 1.0:
        scores = top_p_filter(scores, s.top_p)
    probs = torch.nn.functional.softmax(scores, dim=-1)
    # Checked before multinomial: on CUDA a NaN there is a device-side assert, not an exception.
    if not bool(torch.isfinite(probs).all()):
        raise BadLogits("the model's logits are NaN or infinite")
    return int(torch.multinomial(probs, num_samples=1, generator=s.generator)[0, 0])


def choose(logits: torch.Tensor, rows: list[Sampling]) -> list[Choice | Exception]:
    """Per row of ``logits`` ([rows, vocab], float32): a :class:`Choice`, or the exception
    that row raised (the other rows are not affected)."""
    n = logits.shape[0]
    out: list[Choice | Exception] = [BadLogits("no token chosen")] * n
    plain = [i for i in range(n) if rows[i].plain_greedy]
    if plain:
        picked = _argmax(logits if len(plain) == n else logits[plain])
        for i, token in zip(plain, picked):
            out[i] = Choice(token) if token is not None else BadLogits(
                "the model's logits are NaN or infinite"
            )
    for i in range(n):
        if rows[i].plain_greedy:
            continue
        try:
            out[i] = Choice(_one(logits[i : i + 1], rows[i]))
        except Exception as error:  # noqa: BLE001 - this row fails, the others go on
            out[i] = error
    wanted = [i for i in range(n) if rows[i].logprobs is not None and isinstance(out[i], Choice)]
    if wanted:
        raw = torch.log_softmax(logits[wanted], dim=-1)
        for row, i in enumerate(wanted):
            choice = out[i]
            assert isinstance(choice, Choice)
            choice.logprob = float(raw[row, choice.token_id])
            k = rows[i].logprobs or 0
            if k > 0:
                values, ids = torch.topk(raw[row], min(k, raw.shape[-1]))
                choice.top_logprobs = list(zip(ids.tolist(), values.tolist()))
    return out
