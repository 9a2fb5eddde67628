"""The running batch's key/value cache: one left-padded ``DynamicCache``, rows joining and leaving.

Every running sequence is one row of a transformers ``DynamicCache`` whose layers hold keys and
values of shape ``[rows, heads, width, head_dim]``. Rows are **right-aligned**: a row with
``n`` cached tokens has them in the last ``n`` columns and zeros (masked out) before them, so
that one decode step appends one column for every row at once (the ``DynamicLayer.update`` of
the forward pass) and each row's next token sits at the same column.

- **Join** (:meth:`BatchCache.add`): a new sequence is prefilled alone, into its own one-row
  cache (exactly what ``generate`` computes for it), then copied into the batch: the batch and
  the newcomer are padded on the left to the wider of the two and stacked (one copy of the
  batch's tensors per join).
- **Leave** (:meth:`BatchCache.remove`): the rows that finished are dropped and the columns that
  are padding in every remaining row are cut from the left (one copy per step that loses rows),
  so the width is always the longest running sequence's length: no row carries more padding
  than the difference between its length and the longest's.
- **Size**: the tensors hold ``rows * width`` slots (:attr:`BatchCache.slots`), padding
  included, not just the tokens cached (:attr:`BatchCache.tokens`): the engine's admission
  bounds the slots (see :mod:`shoal.llm.engine`). A join or a leave briefly holds the old and
  the new tensors at once. ``add`` and ``remove`` build every layer's new tensors before
  swapping them in, so one that fails (out of memory) leaves the batch as it was.
- **Decode inputs** (:meth:`BatchCache.decode_inputs`): the attention mask ``[rows, width + 1]``
  (0 over each row's padding) and explicit ``position_ids`` (each row's own length), so that
  padding changes neither which positions a token attends to nor its position embedding.

Masked positions get exactly zero attention weight, so a row's result is the one it would get
alone up to float rounding of differently shaped matrix products (about 1e-7 relative on CPU):
greedy tokens match ``generate`` unless two logits tie to within that. The alternative — a cache
per sequence, stacked with padding before every step — copies every row's whole cache every
step; this layout copies only when the batch changes (plus ``DynamicLayer``'s own append).

Only plain full-attention layers (``DynamicLayer``) are supported: sliding-window and
linear-attention layers keep state that padding and row surgery would corrupt;
:func:`check_layers` refuses them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..errors import NotSupported


def check_layers(cache: DynamicCache) -> None:
    """Raise ``NotSupported`` unless every layer of ``cache`` is a plain ``DynamicLayer``."""
    for layer in cache.layers:
        if type(layer) is not DynamicLayer:
            raise NotSupported(
                f"the generation engine supports full-attention key/value caches only; this model "
                f"uses {type(layer).__name__} (sliding-window or linear attention)"
            )


class BatchCache:
    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.lengths: list[int] = []  # cached tokens per row

    @property
    def rows(self) -> int:
        return len(self.lengths)

    @property
    def width(self) -> int:
        return max(self.lengths, default=0)

    @property
    def tokens(self) -> int:
        """Tokens held (padding not counted)."""
        return sum(self.lengths)

    @property
    def slots(self) -> int:
        """Key/value slots allocated per layer: ``rows * width``, the padding included."""
        return self.rows * self.width

    def reset(self) -> None:
        self.cache = None
        self.lengths = []

    def add(self, cache: DynamicCache, length: int) -> None:
        """Append a one-row cache of ``length`` tokens (a prefilled sequence) as the last row."""
        check_layers(cache)
        if self.cache is None:
            self.cache = cache
            self.lengths = [length]
            return
        width = self.width
        new_width = max(width, length)
        rows = self.rows
        # Every layer's new tensors first, then swapped in: a failure (out of memory) leaves
        # the batch as it was.
        stacked = [
            (
                _stack(layer.keys, extra.keys, rows, width, length, new_width),
                _stack(layer.values, extra.values, rows, width, length, new_width),
            )
            if layer.is_initialized
            else None
            for layer, extra in zip(self.cache.layers, cache.layers)
        ]
        for layer, pair in zip(self.cache.layers, stacked):
            if pair is not None:
                layer.keys, layer.values = pair
        self.lengths.append(length)

    def remove(self, rows: list[int]) -> None:
        """Drop ``rows`` (indices) and the columns that are padding in every remaining row."""
        if not rows:
            return
        gone = set(rows)
        keep = [i for i in range(self.rows) if i not in gone]
        if not keep:
            self.reset()
            return
        lengths = [self.lengths[i] for i in keep]
        cut = self.width - max(lengths)
        assert self.cache is not None
        index = torch.tensor(keep, device=self.cache.layers[0].keys.device)
        # As in add: all new tensors first, so that a failure leaves the batch as it was.
        kept = [
            (layer.keys.index_select(0, index)[:, :, cut:], layer.values.index_select(0, index)[:, :, cut:])
            if layer.is_initialized
            else None
            for layer in self.cache.layers
        ]
        for layer, pair in zip(self.cache.layers, kept):
            if pair is not None:
                layer.keys, layer.values = pair
        self.lengths = lengths

    def decode_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(attention_mask [rows, width + 1], position_ids [rows, 1])`` for one decode step."""
        width = self.width
        lengths = torch.tensor(self.lengths, device=device)
        columns = torch.arange(width + 1, device=device)
        mask = (columns[None, :] >= (width - lengths)[:, None]).to(torch.long)
        return mask, lengths[:, None]

    def advance(self) -> None:
        """After a decode step: every row holds one more token."""
        self.lengths = [n + 1 for n in self.lengths]


def _stack(
    batch: torch.Tensor, extra: torch.Tensor, rows: int, width: int, length: int, new_width: int
) -> torch.Tensor:
    """``batch`` [rows, h, width, d] and ``extra`` [1, h, length, d], right-aligned in one
    zero-padded [rows + 1, h, new_width, d] tensor."""
    out = batch.new_zeros((rows + 1, batch.shape[1], new_width, batch.shape[3]))
    out[:rows, :, new_width - width :] = batch
    out[rows:, :, new_width - length :] = extra
    return out
