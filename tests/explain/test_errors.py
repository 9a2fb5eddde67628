"""Bad requests and impossible explainers: a 400 (or a failed load) naming the problem and the
fix, never a 500; without shap, a 501 naming the extra."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from explain_helpers import FEATURES, Run, Served, custom, data, request
from shoal.errors import InvalidInput, LoadError
from shoal.explain import INSTALL, ExplainerConfig, ExplainerUnavailable, explain
from shoal.repository.config import read_config

X, Y = data()

SCORE = """
    import numpy as np
    from shoal import Model

    class Score(Model):
        def predict(self, request):
            x = request.as_numpy()
            return {"label": np.where(x[:, 0] > 0, "yes", "no"), "score": x[:, 0] * 2}
"""

LABELS = """
    import numpy as np
    from shoal import Model

    class Labels(Model):
        def predict(self, request):
            return np.where(request.as_numpy()[:, 0] > 0, "yes", "no")
"""


def failure(run: Run, name: str, rows: Any, config: ExplainerConfig | None = None,
            **options: Any) -> str:
    async def test(served: Served) -> Any:
        chosen = config if config is not None else served.config(name)
        with pytest.raises(InvalidInput) as info:
            await explain(served.endpoint(name), request(rows), chosen, **options)
        return str(info.value)

    return run(test)


def test_more_rows_than_max_rows(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE, "runtime: custom\nexplainer: {max_rows: 5}\n")
    message = failure(run, "score", X[:6])
    assert message == (
        "an explain request of model 'score' may carry at most 5 rows (explainer.max_rows), "
        "not 6: split it"
    )
    assert "at most 3 rows" in failure(run, "score", X[:4], max_rows=3)
    assert "at most 100 rows" in failure(run, "score", np.zeros((101, 5)), ExplainerConfig())


def test_no_background_names_what_to_configure(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE)
    message = failure(run, "score", X[:2])
    assert message.startswith(
        "permutation SHAP needs background data (typical rows to compare with), and model "
        "'score' has none: set explainer.background in its model.yaml to a file"
    )
    assert "{rows: 100}" in message and "at least 10 rows" in message


def test_a_background_of_the_wrong_width_and_the_model_still_predicts(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE, "runtime: custom\nexplainer: {background: bg.npy}\n")
    np.save(tmp_path / "score" / "bg.npy", np.zeros((10, 4)))

    async def test(served: Served) -> Any:
        with pytest.raises(InvalidInput, match=r"explainer.background bg.npy has 4 columns, but "
                                               r"model 'score' takes 5 features"):
            await explain(served.endpoint("score"), request(X[:2]), served.config("score"))
        return await served.endpoint("score").infer(request(X[:2]))

    assert run(test).output("score").shape == (2,)


def test_an_unreadable_background_file(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE, "runtime: custom\nexplainer: {background: bg.csv}\n")
    (tmp_path / "score" / "bg.csv").write_text("a,b,c,d,e\n1,2,x,4,5\n")
    assert failure(run, "score", X[:2]).startswith("explainer.background bg.csv must hold numbers")


def test_unknown_method_or_key_fails_the_load(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "magic", SCORE, "runtime: custom\nexplainer: {method: magic}\n")
    custom(tmp_path / "typo", SCORE, "runtime: custom\nexplainer: {methd: tree}\n")
    custom(tmp_path / "missing", SCORE, "runtime: custom\nexplainer: {background: gone.npy}\n")
    custom(tmp_path / "suffix", SCORE, "runtime: custom\nexplainer: {background: bg.txt}\n")

    async def test(served: Served) -> Any:
        return {name: served.state(name) for name in ("magic", "typo", "missing", "suffix")}

    states = run(test)
    assert all(state["state"] == "UNAVAILABLE" for state in states.values())
    assert states["magic"]["reason"] == (
        "model.yaml is invalid: explainer.method: Input should be 'auto', 'tree', 'linear', "
        "'permutation', 'kernel' or 'exact'"
    )
    assert states["typo"]["reason"] == "model.yaml is invalid: explainer.methd: Extra inputs are not permitted"
    assert states["missing"]["reason"] == (
        "model.yaml is invalid: explainer: background 'gone.npy' is not a file in missing/ (a "
        "relative path is read from the model's folder, the one holding model.yaml)"
    )
    assert "'bg.txt' is not a .npy, .csv or .parquet file" in states["suffix"]["reason"]


def test_config_checks(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text("explainer: {feature_names: [a, b, a]}\n")
    with pytest.raises(LoadError, match="explainer.feature_names: 'a' is named twice"):
        read_config(tmp_path)
    (tmp_path / "model.yaml").write_text("explainer: {background: {rows: 0}}\n")
    with pytest.raises(LoadError, match="explainer.background"):
        read_config(tmp_path)
    (tmp_path / "model.yaml").write_text("explainer: {background: {rows: 20}, max_evals: 100}\n")
    config = read_config(tmp_path).explainer
    assert config is not None and config.sampled_rows == 20 and config.background_path is None
    assert config.max_evals == 100 and config.max_rows == 100 and config.method == "auto"


def test_methods_the_model_cannot_take(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE)
    message = failure(run, "score", X[:12], ExplainerConfig(method="tree"))
    assert message == (
        "method tree needs a tree ensemble (scikit-learn forests and gradient boosting, XGBoost, "
        "LightGBM, CatBoost); model 'score' is a custom model: use method permutation (or auto)"
    )
    assert "needs a linear model" in failure(run, "score", X[:12], ExplainerConfig(method="linear"))
    wide = np.zeros((12, 15))
    assert "method exact evaluates 2^features coalitions, and model 'score' takes 15 features" in (
        failure(run, "score", wide, ExplainerConfig(method="exact"))
    )


def test_outputs_that_cannot_be_explained(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE)
    custom(tmp_path / "labels", LABELS)
    # The endpoint's own answer to a request for an output it does not have.
    assert failure(run, "score", X[:12], ExplainerConfig(output="nope")) == (
        "model 'score' has no output 'nope'; it produced ['label', 'score']"
    )
    assert failure(run, "labels", X[:12]).startswith(
        "model 'labels' returned no numeric output with a value per row to explain"
    )
    assert failure(run, "score", X[:12], ExplainerConfig(output="label")).startswith(
        "output 'label' of model 'score' is BYTES [12]; explanations need numbers"
    )


def test_the_chosen_output_of_a_model_with_several(tmp_path: Path, run: Run) -> None:
    custom(tmp_path / "score", SCORE)

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("score"), request(X[:12]), None)

    response = run(test)  # the first numeric output with a value per row
    assert response.parameters["output"] == "score"
    assert [t.name for t in response.outputs] == ["attributions", "base_values", "score"]


def test_requests_that_cannot_be_explained(tmp_path: Path, run: Run) -> None:
    from sklearn.linear_model import LogisticRegression

    (tmp_path / "linear").mkdir()
    joblib.dump(LogisticRegression().fit(X, Y), tmp_path / "linear" / "model.joblib")
    assert "has shape [12, 3] but model 'linear' expects [-1, 5]" in failure(run, "linear", X[:12, :3])
    assert failure(run, "linear", np.array([["a"] * FEATURES])).startswith("input 'input-0'")
    assert failure(run, "linear", np.zeros((0, FEATURES))) == "the explain request has no rows to explain"


def test_without_shap_it_is_a_501_naming_the_extra(tmp_path: Path, run: Run, monkeypatch: Any) -> None:
    custom(tmp_path / "score", SCORE)
    from shoal.explain import methods

    monkeypatch.setitem(sys.modules, "shap", None)  # import shap raises ImportError
    monkeypatch.setattr(methods, "_shap", None)  # as in a process that never imported it

    async def test(served: Served) -> Any:
        with pytest.raises(ExplainerUnavailable) as info:
            await explain(served.endpoint("score"), request(X[:12]), None)
        return info.value

    error = run(test)
    assert error.http_status == 501
    assert str(error) == (
        "explanations need the Python package 'shap', which this server does not have: install "
        f"the explain extra ({INSTALL})"
    )
    assert INSTALL == "pip install 'shoal[explain]'"


@pytest.mark.parametrize("path", ["../secret.npy", "/etc/secret.npy", "data/../../secret.csv", "~/x.npy"])
def test_a_background_file_must_be_inside_the_model_folder(tmp_path: Path, path: str) -> None:
    (tmp_path / "model").mkdir()
    np.save(tmp_path / "secret.npy", np.zeros((3, 2)))
    (tmp_path / "model" / "model.yaml").write_text(f"explainer: {{background: '{path}'}}\n")
    with pytest.raises(LoadError, match="inside the model's folder"):
        read_config(tmp_path / "model")


def test_a_background_csv_error_does_not_quote_the_file(tmp_path: Path) -> None:
    from shoal.explain.background import read_background

    csv = tmp_path / "background.csv"
    csv.write_text("a,b\n1,2\nroot,hunter2\n")
    with pytest.raises(InvalidInput) as info:
        read_background(csv)
    assert "hunter2" not in str(info.value) and "root" not in str(info.value)


def test_too_many_explanations_at_once_is_a_503(monkeypatch: Any) -> None:
    import asyncio

    from shoal.errors import Overloaded
    from shoal.explain import explainer

    monkeypatch.setattr(explainer, "_running", explainer.MAX_CONCURRENT)
    with pytest.raises(Overloaded):
        asyncio.run(explain(object(), request(X[:1]), None))
