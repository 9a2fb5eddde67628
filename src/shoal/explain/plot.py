"""The picture of an explanation: a waterfall chart of one row's attributions.

From the base value (the model's average output) at the bottom, each feature's attribution
moves the output right (red, raises it) or left (blue, lowers it), the largest at the top,
ending at the row's prediction. At most :data:`MAX_FEATURES_SHOWN` features get a bar of
their own; the others share one ("N other features"). For a multi-output explanation
(classes), the output drawn is the one the model predicts highest for that row.

matplotlib is imported on first use, with the Agg renderer only (no pyplot, no display, no
global state): safe on a worker thread. Drawing takes tens of milliseconds: call :func:`png`
off the event loop (``await asyncio.to_thread(png, response)``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..types import InferenceRequest, InferenceResponse
from .errors import ExplainerUnavailable
from .explainer import ATTRIBUTIONS, BASE_VALUES

#: Image width in pixels; the height grows with the bars (see :func:`png_size`).
WIDTH = 800
#: Pixels per bar, and for the title and axis around them.
BAR_HEIGHT = 40
FRAME_HEIGHT = 140
MAX_FEATURES_SHOWN = 12
DPI = 100
POSITIVE = "#e8384f"
NEGATIVE = "#1e88e5"


def png_size(features: int) -> tuple[int, int]:
    """(width, height) in pixels of the picture of an explanation of ``features`` features."""
    bars = min(features, MAX_FEATURES_SHOWN) + (1 if features > MAX_FEATURES_SHOWN else 0)
    return WIDTH, FRAME_HEIGHT + BAR_HEIGHT * bars


def png(response: InferenceResponse, row: int = 0, *, features: Any = None) -> bytes:
    """A PNG waterfall chart of row ``row`` of an explanation made by
    :func:`shoal.explain.explain`. ``features``: the explained rows' feature values, to show
    beside the names (the explain request itself, or a ``[rows, features]`` array); without
    them the chart shows names only."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ExplainerUnavailable.missing("matplotlib") from None
    by_name = {t.name: t for t in response.outputs}
    if ATTRIBUTIONS not in by_name or BASE_VALUES not in by_name:
        raise InvalidInput("not an explanation: it has no attributions and base_values outputs")
    values = np.asarray(by_name[ATTRIBUTIONS].data, dtype=np.float64)
    base = np.asarray(by_name[BASE_VALUES].data, dtype=np.float64)
    if not 0 <= row < len(values):
        raise InvalidInput(f"the explanation has {len(values)} rows; there is no row {row}")
    predicted = next((t for t in response.outputs if t.name not in (ATTRIBUTIONS, BASE_VALUES)), None)
    parameters = response.parameters or {}
    output = str(parameters.get("output") or (predicted.name if predicted is not None else "output"))
    names = list(parameters.get("feature_names") or [f"feature {i}" for i in range(values.shape[1])])
    shown_values = _feature_values(features, parameters, row, values.shape[1])

    v, b = values[row], base[row]
    title = f"{response.model_name or 'model'}: why {output}"
    if v.ndim == 2:  # one column per output: draw the one the model predicts highest
        column = 0
        if predicted is not None:
            p = np.asarray(predicted.data)
            if p.ndim == 2 and p.shape[1] == v.shape[1] and p.dtype.kind in "biuf":
                column = int(np.argmax(p[row]))
        v, b = v[:, column], np.asarray(b).reshape(-1)[column]
        title = f"{response.model_name or 'model'}: why {output}[{column}]"
    b = float(b)
    prediction = b + float(v.sum())

    order = np.argsort(-np.abs(v), kind="stable")
    top = order[:MAX_FEATURES_SHOWN]
    items: list[tuple[str, float]] = []
    rest = order[MAX_FEATURES_SHOWN:]
    if len(rest):
        items.append((f"{len(rest)} other features", float(v[rest].sum())))
    for index in top[::-1]:  # the largest last: at the top
        label = names[index] if index < len(names) else f"feature {index}"
        if shown_values is not None:
            label = f"{label} = {_number(shown_values[index])}"
        items.append((label, float(v[index])))

    width, height = png_size(len(v))
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.34, 70 / height, 0.60, 1 - 120 / height))
    position = b
    ends = [b]
    for y, (label, value) in enumerate(items):
        axes.barh(y, value, left=position, height=0.6, color=POSITIVE if value >= 0 else NEGATIVE)
        position += value
        ends.append(position)
    low, high = min(ends), max(ends)
    span = (high - low) or max(abs(high), 1.0)
    axes.set_xlim(low - 0.18 * span, high + 0.18 * span)
    position = b
    for y, (label, value) in enumerate(items):
        end = position + value
        axes.text(end + (0.01 * span if value >= 0 else -0.01 * span), y, f"{value:+.3g}",
                  va="center", ha="left" if value >= 0 else "right", fontsize=9)
        position = end
    axes.axvline(b, color="#888888", linestyle="--", linewidth=1)
    axes.axvline(prediction, color="#333333", linewidth=1)
    axes.set_yticks(range(len(items)), [label for label, _ in items], fontsize=9)
    axes.set_ylim(-0.6, len(items) - 0.4)
    axes.set_xlabel(f"base value {b:.4g}  \u2192  prediction {prediction:.4g}", fontsize=10)
    method = parameters.get("method")
    axes.set_title(f"{title} (row {row}{f', {method} SHAP' if method else ''})", fontsize=11)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _feature_values(features: Any, parameters: dict[str, Any], row: int, count: int) -> np.ndarray | None:
    if features is None:
        return None
    if isinstance(features, InferenceRequest):
        order = list(parameters.get("inputs") or [t.name for t in features.inputs])
        by_name = {t.name: t for t in features.inputs}
        if len(by_name) == 1 and len(order) == 1:
            order = list(by_name)
        if any(name not in by_name or by_name[name].datatype == "BYTES" for name in order):
            return None
        parts = [np.asarray(by_name[name].data) for name in order]
        if any(p.ndim == 0 or len(p) <= row for p in parts):
            return None
        rows = np.concatenate([p[row].reshape(-1) for p in parts])
    else:
        data = np.asarray(features)
        if data.ndim == 1:
            data = data.reshape(1, -1)
        if data.ndim != 2 or len(data) <= row or data.dtype.kind not in "biuf":
            return None
        rows = data[row]
    return rows if rows.size == count else None


def _number(value: Any) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"
