"""Build the benchmark models into benchmarks/.work/models, laid out for each server.

    .venv/bin/python benchmarks/make_models.py [--force]

Two scikit-learn classifiers on the same synthetic data (20 features, fixed seed):
``logreg`` (LogisticRegression) and ``forest`` (RandomForestClassifier, 100 trees). Each is
dumped once with joblib and the same bytes are copied into every server's layout:

    models/shoal/<name>/model.joblib                        Shoal: one folder per model
    models/mlserver/<name>/model.joblib + model-settings.json   MLServer (mlserver_sklearn)
    models/kserve/<name>/model.joblib                       KServe (benchmarks/servers/kserve_sklearn.py)

Run it with the interpreter that has the scikit-learn version all three venvs share
(benchmarks/setup.sh pins it to Shoal's).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
MODELS = HERE / ".work" / "models"
FEATURES = 20
SEED = 0
SERVERS = ("shoal", "mlserver", "kserve")


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(2000, FEATURES))
    weights = rng.normal(size=FEATURES)
    y = (x @ weights + rng.normal(scale=0.5, size=len(x)) > 0).astype(np.int64)
    return x, y


def estimators() -> dict[str, object]:
    return {
        "logreg": LogisticRegression(max_iter=500),
        # n_jobs=1: one row per request, a thread pool per call would only add overhead.
        "forest": RandomForestClassifier(n_estimators=100, random_state=SEED, n_jobs=1),
    }


def mlserver_settings(name: str) -> dict[str, object]:
    return {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }


def build(force: bool = False) -> list[Path]:
    stamp = MODELS / "sklearn-version"
    if not force and stamp.is_file() and stamp.read_text().strip() == sklearn.__version__ and all(
        (MODELS / server / name / "model.joblib").is_file() for server in SERVERS for name in estimators()
    ):
        return []
    if MODELS.exists():
        shutil.rmtree(MODELS)
    x, y = data()
    built = []
    for name, estimator in estimators().items():
        estimator.fit(x, y)
        source = MODELS / "_artifacts" / f"{name}.joblib"
        source.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(estimator, source)
        for server in SERVERS:
            folder = MODELS / server / name
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, folder / "model.joblib")
            built.append(folder / "model.joblib")
        (MODELS / "mlserver" / name / "model-settings.json").write_text(
            json.dumps(mlserver_settings(name), indent=2) + "\n"
        )
    # MLServer reads settings.json from the repository root; ports come from the environment.
    (MODELS / "mlserver" / "settings.json").write_text(json.dumps({"debug": False}) + "\n")
    stamp.write_text(sklearn.__version__ + "\n")
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rebuild even if the models exist")
    args = parser.parse_args()
    built = build(args.force)
    for path in built:
        print(f"built {path.relative_to(HERE)}")
    if not built:
        print(f"models up to date in {MODELS.relative_to(HERE)} (scikit-learn {sklearn.__version__})")


if __name__ == "__main__":
    main()
