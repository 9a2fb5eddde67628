"""From a model folder to a model (runtimes.create_model): which runtime, which parameters.

Settings that would be silently ignored, folders that could be read two ways and models that
could never answer fail here, with a reason that says what to change.
"""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import joblib
import pytest
import xgboost
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from shoal.errors import LoadError
from shoal.repository.config import ModelConfig
from shoal.runtimes import RUNTIMES, create_model, detect_runtime

IRIS = load_iris()


def iris(folder: Path, artifact: str = "model.joblib") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(IRIS.data, IRIS.target), folder / artifact)
    return folder


def booster(folder: Path, artifact: str = "model.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    xgboost.XGBClassifier(n_estimators=3, max_depth=2).fit(IRIS.data, IRIS.target).save_model(folder / artifact)
    return folder


def create(folder: Path, version_dir: Path | None = None, **config: object):
    return create_model("m", "1", version_dir or folder, folder, ModelConfig(**config))


# --- parameters: each runtime declares what it reads; anything else fails the load ---------


@pytest.mark.parametrize(
    ("runtime", "typo", "meant", "accepted"),
    [
        ("sklearn", "methd", "method", "method"),
        ("xgboost", "nthreads", "nthread", "device, method, nthread"),
        ("lightgbm", "num_thread", "num_threads", "device, method, num_threads"),
        ("catboost", "threads", "thread_count", "device, method, thread_count"),
        ("onnx", "provider", "providers", "inter_op_threads, intra_op_threads, providers"),
        ("pytorch", "devise", "device", "device"),
        ("tensorflow", "signatures", "signature", "device, signature"),
    ],
)
def test_an_unknown_parameter_fails_the_load_naming_it_and_the_accepted_ones(
    tmp_path: Path, runtime: str, typo: str, meant: str, accepted: str
) -> None:
    with pytest.raises(LoadError) as info:
        create(tmp_path, runtime=runtime, parameters={typo: "x"})
    assert str(info.value) == (
        f"unknown parameters in model.yaml for runtime {runtime!r}: {typo!r} (did you mean "
        f"{meant!r}?); it accepts: {accepted}"
    )


def test_mlflow_takes_no_parameters(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="runtime 'mlflow': 'runtime'; it accepts: none"):
        create(tmp_path, runtime="mlflow", parameters={"runtime": "python"})


def test_accepted_parameters_load(tmp_path: Path) -> None:
    model = create(iris(tmp_path), parameters={"method": "predict_proba"})
    model.load()
    assert model.default_methods == ["predict_proba"]
    booster(tmp_path / "xgb")
    model = create(tmp_path / "xgb", parameters={"method": "predict_proba", "nthread": 2, "device": "cpu"})
    model.load()


def test_every_builtin_runtime_declares_its_parameters() -> None:
    for name, runtime in RUNTIMES.items():
        factory = getattr(importlib.import_module(runtime.module), runtime.factory)
        if name == "custom":
            continue  # users' classes: any parameters unless they say otherwise
        cls = factory if isinstance(factory, type) else importlib.import_module(runtime.module).TritonModel
        assert cls.accepted_parameters is not None, name


CUSTOM = """
    from shoal import Model

    class Scaler(Model):
        {accepted}
        def predict(self, request):
            return request.as_numpy() * float(self.parameters.get("factor", 2))
"""


def test_custom_models_take_any_parameters_unless_they_declare_them(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(textwrap.dedent(CUSTOM.format(accepted="")))
    assert create(tmp_path, parameters={"factr": 3}).parameters == {"factr": 3}
    strict = tmp_path / "strict"
    strict.mkdir()
    (strict / "model.py").write_text(
        textwrap.dedent(CUSTOM.format(accepted='accepted_parameters = frozenset({"factor"})'))
    )
    assert create(strict, parameters={"factor": 3}).parameters == {"factor": 3}
    with pytest.raises(LoadError, match=r"runtime 'custom': 'factr' \(did you mean 'factor'\?\); it accepts: factor"):
        create(strict, parameters={"factr": 3})


# --- a custom model that could never answer ---------------------------------------------------


def test_a_custom_model_without_predict_fails_the_load(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(textwrap.dedent("""
        from shoal import Model

        class Forgot(Model):
            def load(self):
                self.ready = True
    """))
    with pytest.raises(LoadError, match=r"Forgot in model.py does not define predict\(self, request\)"):
        create(tmp_path)


def test_predict_inherited_from_a_users_base_class_counts(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(textwrap.dedent("""
        from shoal import Model

        class Base(Model):
            def predict(self, request):
                return request.as_numpy()

        class Child(Base):
            pass
    """))
    assert type(create(tmp_path, model_class="Child")).__name__ == "Child"


# --- which runtime: a folder that could be read two ways is not guessed -----------------------


def test_artifacts_of_two_runtimes_need_runtime_in_model_yaml(tmp_path: Path) -> None:
    booster(iris(tmp_path))
    with pytest.raises(LoadError) as info:
        create(tmp_path)
    message = str(info.value)
    assert "holds artifacts of several runtimes: model.joblib (sklearn), model.json (xgboost)" in message
    assert "runtime: in model.yaml" in message
    assert create(tmp_path, runtime="sklearn").platform == "sklearn"
    assert create(tmp_path, runtime="xgboost").platform == "xgboost"


def test_documented_overlaps_are_not_ambiguous(tmp_path: Path) -> None:
    mlflow_folder = tmp_path / "mlflow"
    mlflow_folder.mkdir()
    (mlflow_folder / "MLmodel").write_text("flavors: {}\n")
    (mlflow_folder / "model.pkl").write_bytes(b"")
    assert detect_runtime(mlflow_folder, mlflow_folder) == "mlflow"
    bst = tmp_path / "bst"
    bst.mkdir()
    (bst / "model.bst").write_bytes(b"")
    assert detect_runtime(bst, bst) == "xgboost"
    versioned = tmp_path / "versioned"
    (versioned / "1").mkdir(parents=True)
    (versioned / "1" / "model.joblib").write_bytes(b"")
    (versioned / "model.py").write_text("")  # the model folder's file: the version's comes first
    assert detect_runtime(versioned / "1", versioned) == "sklearn"


def test_a_folder_with_graph_yaml_and_an_artifact_needs_runtime(tmp_path: Path) -> None:
    iris(tmp_path)
    (tmp_path / "graph.yaml").write_text("root: m\nnodes: {m: {kind: model, model: iris}}\n")
    with pytest.raises(LoadError) as info:
        create(tmp_path)
    assert str(info.value) == (
        f"{tmp_path.name}/ holds both graph.yaml and model artifacts (model.joblib): add runtime: "
        "graph to model.yaml to serve the graph, or runtime: sklearn to serve the model"
    )
    assert create(tmp_path, runtime="sklearn").platform == "sklearn"


def test_runtime_graph_needs_graph_yaml_and_nothing_else(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match=r"says runtime: graph, but .*/ has no graph.yaml"):
        create(tmp_path, runtime="graph")
    (tmp_path / "graph.yaml").write_text("root: m\nnodes: {m: {kind: model, model: iris}}\n")
    with pytest.raises(LoadError, match="beside graph.yaml sets max_inflight, which a graph does not take"):
        create(tmp_path, runtime="graph", max_inflight=3)


# --- version folders that are not integers -----------------------------------------------------


@pytest.mark.parametrize("folder", ["v1", "version-2", "01", "V3", "1.0"])
def test_version_like_folders_are_named_in_the_error(tmp_path: Path, folder: str) -> None:
    iris(tmp_path / folder)
    hint = (
        rf"no model artifact in {tmp_path.name}/; its sub-folder\(s\) {folder}/ look like versions, "
        r"but version folders are plain integers \(1/, 2/, ...\): rename them"
    )
    with pytest.raises(LoadError, match=hint):
        create(tmp_path)
    with pytest.raises(LoadError, match=hint):  # the same when model.yaml names the runtime
        create(tmp_path, runtime="sklearn")


def test_other_sub_folders_change_nothing(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(LoadError, match="^no model artifact found") as info:
        create(tmp_path)
    assert "versions" not in str(info.value)
    iris(tmp_path)
    (tmp_path / "v0").mkdir()  # beside an artifact, a folder is just a folder
    assert create(tmp_path).platform == "sklearn"
