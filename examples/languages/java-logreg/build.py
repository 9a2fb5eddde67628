"""Train the example logistic regression, write its weights, and build the Java model.

    .venv/bin/python examples/languages/java-logreg/build.py [REPOSITORY]

REPOSITORY is the models/ folder beside this script by default; the model is its
``java-logreg/`` folder (model.yaml) with the version folder ``1/``. Another repository gets a
copy of model.yaml first, so tests and benchmarks build into a repository of their own.
Steps, writing only built files (see .gitignore):

1. scikit-learn's LogisticRegression on a fixed synthetic dataset (make_classification,
   seed 42): its coefficients go to ``1/weights.json`` (floats written exactly);
2. ``wrappers/java/build.sh`` compiles the wrapper and ``src/`` into ``1/lib/``;
3. a check: ``java ... --predict request.json`` must give scikit-learn's ``predict_proba``
   (to 1e-12) and ``predict`` for the same rows.

Then serve it: ``shoal serve examples/languages/java-logreg/models``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
WRAPPER_BUILD = ROOT / "wrappers" / "java" / "build.sh"
MAIN_CLASS = "example.LogisticRegressionModel"
FEATURES = ["x0", "x1", "x2", "x3"]
MODELS = HERE / "models"
NAME = "java-logreg"


def dataset() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(
        n_samples=400, n_features=len(FEATURES), n_informative=3, n_redundant=1,
        n_classes=3, n_clusters_per_class=1, random_state=42,
    )


def train() -> LogisticRegression:
    x, y = dataset()
    return LogisticRegression(max_iter=1000).fit(x, y)


def weights(model: LogisticRegression) -> dict[str, Any]:
    return {
        "features": FEATURES,
        "classes": [int(c) for c in model.classes_],
        "coef": model.coef_.tolist(),
        "intercept": model.intercept_.tolist(),
    }


def java_predict(version_dir: Path, request: Path | dict[str, Any]) -> dict[str, Any]:
    """The V2 response the Java model computes for ``request`` (a file, or a request body),
    run as model.yaml's command runs it: from the version folder."""
    command = ["java", "-cp", "lib/*", MAIN_CLASS, "--predict"]
    if isinstance(request, dict):
        done = subprocess.run([*command, "-"], cwd=version_dir, input=json.dumps(request),
                              capture_output=True, text=True, timeout=60, check=False)
    else:
        done = subprocess.run([*command, str(Path(request).resolve())], cwd=version_dir,
                              capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"java --predict failed ({done.returncode}): {done.stderr.strip()}")
    return json.loads(done.stdout)


def build(repository: Path = MODELS, check: bool = True) -> Path:
    """Builds the model into ``repository``; returns its version folder."""
    model_dir = repository.resolve() / NAME
    version_dir = model_dir / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    if model_dir != MODELS / NAME:
        shutil.copy2(MODELS / NAME / "model.yaml", model_dir / "model.yaml")
    model = train()
    (version_dir / "weights.json").write_text(json.dumps(weights(model), indent=1) + "\n")
    subprocess.run([str(WRAPPER_BUILD), "--model", str(HERE / "src"), "--out", str(version_dir / "lib")],
                   check=True, stdout=subprocess.DEVNULL)
    if check:
        request = json.loads((HERE / "request.json").read_text())
        rows = np.array(request["inputs"][0]["data"], dtype=np.float64)
        answer = {o["name"]: o for o in java_predict(version_dir, HERE / "request.json")["outputs"]}
        probabilities = np.array(answer["probabilities"]["data"]).reshape(answer["probabilities"]["shape"])
        expected = model.predict_proba(rows)
        if not np.allclose(probabilities, expected, rtol=0, atol=1e-12):
            raise SystemExit(f"Java's probabilities {probabilities.tolist()} differ from "
                             f"scikit-learn's {expected.tolist()}")
        if answer["label"]["data"] != model.predict(rows).tolist():
            raise SystemExit(f"Java's labels {answer['label']['data']} differ from scikit-learn's")
    return version_dir


if __name__ == "__main__":
    built = build(Path(sys.argv[1]) if len(sys.argv) > 1 else MODELS)
    print(f"built {built} (weights.json, lib/); serve it with: shoal serve {built.parents[1]}")
