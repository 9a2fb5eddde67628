"""The PNG an explanation draws, and the background rows observe() keeps."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from PIL import Image

from explain_helpers import FEATURES, Run, Served, data, request
from shoal import InferenceRequest, InferenceResponse, Tensor
from shoal.errors import InvalidInput
from shoal.explain import ExplainerConfig, explain, observe, png, png_size
from shoal.explain.background import Reservoir, read_background, sampled
from shoal.explain.plot import MAX_FEATURES_SHOWN

X, Y = data()


def explanation(values: np.ndarray, base: np.ndarray, predicted: np.ndarray, **parameters: Any) -> InferenceResponse:
    return InferenceResponse(
        [Tensor.from_numpy("attributions", values), Tensor.from_numpy("base_values", base),
         Tensor.from_numpy("predict_proba", predicted)],
        model_name="income", parameters=parameters,
    )


def decoded(picture: bytes) -> Image.Image:
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(picture))
    image.load()
    assert image.format == "PNG"
    return image


def test_the_png_of_a_forest_explanation(tmp_path: Path, run: Run) -> None:
    from sklearn.ensemble import RandomForestClassifier

    (tmp_path / "income").mkdir()
    joblib.dump(RandomForestClassifier(10, random_state=0).fit(X, Y), tmp_path / "income" / "model.joblib")
    (tmp_path / "income" / "model.yaml").write_text(
        "explainer: {feature_names: [age, education, hours, capital_gain, capital_loss]}\n"
    )
    rows = request(X[:3])

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("income"), rows, served.config("income"))

    response = run(test)
    for features in (None, rows, X[:3]):
        image = decoded(png(response, 1, features=features))
        assert image.size == png_size(FEATURES) == (800, 140 + 40 * FEATURES)
    with pytest.raises(InvalidInput, match="the explanation has 3 rows; there is no row 3"):
        png(response, 3)


def test_many_features_share_a_bar(tmp_path: Path) -> None:
    features = 30
    values = np.linspace(-1, 1, features).reshape(1, features)
    response = explanation(values, np.array([0.5]), np.array([[0.4, 0.6]]), method="permutation",
                           feature_names=[f"f{i}" for i in range(features)], output="score")
    image = decoded(png(response, 0, features=np.arange(features)[None, :]))
    assert image.size == png_size(features) == (800, 140 + 40 * (MAX_FEATURES_SHOWN + 1))
    multi = explanation(np.ones((2, 3, 2)), np.zeros((2, 2)), np.array([[0.1, 0.9], [0.8, 0.2]]))
    assert decoded(png(multi, 1)).size == png_size(3)
    with pytest.raises(InvalidInput, match="not an explanation"):
        png(InferenceResponse([Tensor.from_numpy("y", np.zeros(2))]))


def test_the_reservoir_keeps_a_uniform_sample() -> None:
    reservoir = Reservoir(50)
    for start in range(0, 1000, 4):
        rows = np.arange(start, start + 4, dtype=np.float64)
        reservoir.add([Tensor.from_numpy("x", np.stack([rows, -rows], axis=1))])
    for value in range(1000, 2000):
        reservoir.add([Tensor.from_numpy("x", np.array([[value, -value]], dtype=np.float64))])
    kept = reservoir.sample()["x"]
    assert kept.shape == (50, 2) and reservoir.seen == 2000
    np.testing.assert_array_equal(kept[:, 1], -kept[:, 0])  # whole rows, never mixed
    assert len(set(kept[:, 0])) == 50
    assert 500 < kept[:, 0].mean() < 1500  # from the whole stream, not its start or its end
    # New inputs (a reloaded model): start again. BYTES: nothing to keep.
    reservoir.add([Tensor.from_numpy("y", np.zeros((3, 4)))])
    assert reservoir.sample()["y"].shape == (3, 4) and "x" not in reservoir.sample()
    reservoir.add([Tensor.from_numpy("y", np.array([["a", "b", "c", "d"]]))])
    assert reservoir.seen == 3


def test_observe_follows_the_config() -> None:
    observe("m", request(X[:30]), ExplainerConfig(background={"rows": 8}))
    assert sampled("m")["input-0"].shape == (8, FEATURES)
    observe("n", request(X[:30]))
    assert sampled("n")["input-0"].shape == (30, FEATURES)
    observe("f", request(X[:30]), ExplainerConfig(background="bg.npy"))
    assert sampled("f") == {}  # a background file: nothing to sample


def test_background_files(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "plain.csv", X[:5], delimiter=",")
    plain = read_background(tmp_path / "plain.csv")
    np.testing.assert_allclose(plain.data, X[:5])
    assert plain.columns is None
    (tmp_path / "named.csv").write_text("a,b\n1,2\n3,4\n")
    named = read_background(tmp_path / "named.csv")
    assert named.columns == ["a", "b"] and named.data.tolist() == [[1, 2], [3, 4]]
    np.save(tmp_path / "bad.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(InvalidInput, match="bad.npy holds NaN or infinite values"):
        read_background(tmp_path / "bad.npy")
    np.save(tmp_path / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="objects.npy cannot be read"):
        read_background(tmp_path / "objects.npy")


def test_parquet_background_files(tmp_path: Path) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "table.parquet").write_bytes(b"PAR1")
        with pytest.raises(InvalidInput, match="reading Parquet needs pyarrow"):
            read_background(tmp_path / "table.parquet")
        return
    import pandas as pd

    pd.DataFrame(X[:4], columns=list("abcde")).to_parquet(tmp_path / "table.parquet")
    table = read_background(tmp_path / "table.parquet")
    assert table.columns == list("abcde") and table.data.shape == (4, 5)


def test_explaining_with_a_parquet_background(tmp_path: Path, run: Run) -> None:
    pytest.importorskip("pyarrow")
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    (tmp_path / "m").mkdir()
    joblib.dump(LogisticRegression().fit(X, Y), tmp_path / "m" / "model.joblib")
    pd.DataFrame(X[:40], columns=list("abcde")).to_parquet(tmp_path / "m" / "bg.parquet")
    (tmp_path / "m" / "model.yaml").write_text("explainer: {background: bg.parquet}\n")

    async def test(served: Served) -> Any:
        return await explain(served.endpoint("m"), InferenceRequest([Tensor.from_numpy("x", X[:2])]),
                             served.config("m"))

    response = run(test)
    assert response.parameters["method"] == "linear"
    assert response.parameters["feature_names"] == list("abcde")
    assert response.parameters["background"] == "file bg.parquet (40 rows)"
