"""Build the benchmark models into benchmarks/.work/models, laid out for each server.

    .venv/bin/python benchmarks/make_models.py [--force]

Two scikit-learn classifiers on the same synthetic data (20 features, fixed seed):
``logreg`` (LogisticRegression) and ``forest`` (RandomForestClassifier, 100 trees). Each is
dumped once with joblib and the same bytes are copied into every server's layout:

    models/shoal/<name>/model.joblib                        Shoal: one folder per model
    models/mlserver/<name>/model.joblib + model-settings.json   MLServer (mlserver_sklearn)
    models/kserve/<name>/model.joblib                       KServe (benchmarks/servers/kserve_sklearn.py)
    models/shoal-batch/<name>/model.joblib + model.yaml     Shoal with adaptive batching (32 rows, 2 ms)
    models/mlserver-batch/<name>/model.joblib + model-settings.json   MLServer with adaptive batching
                                                            (max_batch_size 32, max_batch_time 0.002 s)

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
SERVERS = ("shoal", "mlserver", "kserve", "shoal-batch", "mlserver-batch")
# Adaptive batching for the *-batch layouts: at most 32 rows per predict, wait at most 2 ms.
MAX_BATCH_SIZE = 32
MAX_BATCH_DELAY_MS = 2


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


def mlserver_settings(name: str, batching: bool = False) -> dict[str, object]:
    settings: dict[str, object] = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }
    if batching:  # MLServer's adaptive batching: max_batch_time is in seconds
        settings["max_batch_size"] = MAX_BATCH_SIZE
        settings["max_batch_time"] = MAX_BATCH_DELAY_MS / 1000
    return settings


def shoal_batch_config() -> str:
    return f"max_batch_size: {MAX_BATCH_SIZE}\nmax_batch_delay_ms: {MAX_BATCH_DELAY_MS}\n"


def build(force: bool = False) -> list[Path]:
    """Train and dump the models if needed, then lay them out for every server.

    The artifacts are kept while the scikit-learn version matches; a layout that is missing
    (a server added later) is filled from them, and the settings files are rewritten each time.
    """
    stamp = MODELS / "sklearn-version"
    artifacts = MODELS / "_artifacts"
    fresh = force or not (
        stamp.is_file() and stamp.read_text().strip() == sklearn.__version__
        and all((artifacts / f"{name}.joblib").is_file() for name in estimators())
    )
    built = []
    if fresh:
        if MODELS.exists():
            shutil.rmtree(MODELS)
        x, y = data()
        artifacts.mkdir(parents=True)
        for name, estimator in estimators().items():
            estimator.fit(x, y)
            joblib.dump(estimator, artifacts / f"{name}.joblib")
    for name in estimators():
        source = artifacts / f"{name}.joblib"
        for server in SERVERS:
            folder = MODELS / server / name
            target = folder / "model.joblib"
            if fresh or not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                built.append(target)
        for server, batching in (("mlserver", False), ("mlserver-batch", True)):
            (MODELS / server / name / "model-settings.json").write_text(
                json.dumps(mlserver_settings(name, batching), indent=2) + "\n"
            )
        (MODELS / "shoal-batch" / name / "model.yaml").write_text(shoal_batch_config())
    # MLServer reads settings.json from the repository root; ports come from the environment.
    for server in ("mlserver", "mlserver-batch"):
        (MODELS / server / "settings.json").write_text(json.dumps({"debug": False}) + "\n")
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
