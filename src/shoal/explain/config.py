"""The ``explainer:`` section of ``model.yaml``.

Example::

    explainer:
      method: auto                 # auto | tree | linear | permutation | kernel | exact
      background: background.npy   # .npy / .csv / .parquet in the model's folder; or {rows: 100}
      max_evals: 500               # model evaluations per explained row (permutation, kernel)
      output: predict_proba        # which model output to explain; else chosen per method
      feature_names: [age, education, hours]   # else from the model's inputs
      max_rows: 100                # rows one explain request may ask for (400 beyond it)

Every key is optional; an unknown key, or an unknown method, fails the model's load naming it
(as any ``model.yaml`` mistake does). A ``background`` file is looked up in the model's folder
(the one holding ``model.yaml``; an absolute path is taken as it is): :func:`read_config
<shoal.repository.config.read_config>` validates with ``context={"folder": model_dir}``, which
checks the file is there and readable by its suffix and remembers the folder
(:attr:`ExplainerConfig.background_path`). Whether its width fits the model is checked when a
request is explained (a 400 naming both widths), so a model with a broken explainer still serves
predictions.

This module is imported whenever ``model.yaml`` is read: it needs pydantic only (no shap, no
numpy, nothing of the serving layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

METHODS = ("auto", "tree", "linear", "permutation", "kernel", "exact")
Method = Literal["auto", "tree", "linear", "permutation", "kernel", "exact"]
#: The background file formats, by suffix.
BACKGROUND_SUFFIXES = (".npy", ".csv", ".parquet")
DEFAULT_MAX_EVALS = 500
DEFAULT_MAX_ROWS = 100
#: The most rows ``background: {rows: N}`` may keep per model (each is a copy of a request row).
MAX_SAMPLED_ROWS = 10_000


class BackgroundRows(BaseModel):
    """``background: {rows: N}``: the background is a uniform sample of up to N rows of the
    requests the model has answered (see :func:`shoal.explain.observe`)."""

    model_config = ConfigDict(extra="forbid")
    rows: int = Field(ge=1, le=MAX_SAMPLED_ROWS)


class ExplainerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Method = "auto"
    """``auto``: exact tree SHAP for tree ensembles, linear SHAP for linear models, permutation
    for everything else (and for tree and linear models served in worker processes)."""
    background: str | BackgroundRows | None = None
    """Reference rows the model-agnostic and linear methods compare against: a file in the
    model's folder, or ``{rows: N}`` sampled from requests. None: rows sampled from recent
    requests if there are any, else the explain request's own rows if it has enough."""
    max_evals: int = Field(default=DEFAULT_MAX_EVALS, ge=1)
    """Model evaluations (per background row) for each explained row: permutation, kernel."""
    output: str | None = None
    """The model output to explain (``predict_proba``, ``predict_raw``, ...)."""
    feature_names: list[str] | None = None
    """One name per feature column, in the order the model's inputs are stacked."""
    max_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=1)
    """The most rows one explain request may carry."""

    _folder: Path | None = PrivateAttr(default=None)

    @field_validator("background")
    @classmethod
    def _background_suffix(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must name a file (.npy, .csv or .parquet) or be {rows: N}")
            parts = Path(value).parts
            if Path(value).is_absolute() or value.startswith("~") or ".." in parts:
                # Only files of the model's own folder: a model.yaml must not make the server
                # read (and echo, as feature names) files elsewhere.
                raise ValueError(f"{value!r} must be a file inside the model's folder (no '..', "
                                 "no absolute path)")
            if Path(value).suffix.lower() not in BACKGROUND_SUFFIXES:
                raise ValueError(
                    f"{value!r} is not a .npy, .csv or .parquet file (or write {{rows: N}} to "
                    "sample rows from requests)"
                )
        return value

    @field_validator("feature_names")
    @classmethod
    def _distinct_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            twice = sorted({n for n in value if value.count(n) > 1})
            if twice:
                raise ValueError(f"{twice[0]!r} is named twice")
            if not value:
                raise ValueError("must name at least one feature")
        return value

    @model_validator(mode="after")
    def _bind_folder(self, info: ValidationInfo) -> ExplainerConfig:
        """With ``context={"folder": ...}`` (model.yaml being read): remember the folder and
        check that a background file is there."""
        folder = (info.context or {}).get("folder") if info is not None else None
        if folder is not None:
            self.bind(Path(folder))
        return self

    def bind(self, folder: Path) -> ExplainerConfig:
        """Resolve ``background`` against ``folder`` (the model's folder); ValueError when the
        file is not there. Returns self."""
        self._folder = Path(folder)
        path = self.background_path
        if path is not None and not path.is_file():
            raise ValueError(
                f"background {self.background!r} is not a file in {self._folder.name}/ (a "
                "relative path is read from the model's folder, the one holding model.yaml)"
            )
        return self

    @property
    def folder(self) -> Path | None:
        """The model folder ``background`` is relative to; None until :meth:`bind`."""
        return self._folder

    @property
    def background_path(self) -> Path | None:
        """The background file, resolved against the model's folder; None when ``background``
        is not a file (or, for a relative path, when no folder is bound)."""
        if not isinstance(self.background, str) or self._folder is None:
            return None
        return self._folder / self.background

    @property
    def sampled_rows(self) -> int | None:
        """N for ``background: {rows: N}``."""
        return self.background.rows if isinstance(self.background, BackgroundRows) else None
