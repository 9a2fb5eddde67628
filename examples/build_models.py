"""Build the example repository's scikit-learn artifacts (they are never committed).

Usage: python examples/build_models.py [REPOSITORY]   (default: examples/repository)
Existing artifacts are kept; delete one to rebuild it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier

HERE = Path(__file__).resolve().parent


def build(repository: Path) -> list[Path]:
    built = []
    iris = load_iris()
    diabetes = load_diabetes()
    targets = {
        # Two versions of one classifier: version 2 is the one served by default.
        repository / "iris" / "1" / "model.joblib": lambda: LogisticRegression(max_iter=200, C=0.1),
        repository / "iris" / "2" / "model.joblib": lambda: LogisticRegression(max_iter=500),
        # A deliberately weak classifier: the example graph's bandit learns to avoid it.
        repository / "iris-stump" / "model.joblib": lambda: DecisionTreeClassifier(max_depth=1),
        repository / "diabetes" / "model.joblib": lambda: RandomForestRegressor(
            n_estimators=20, max_depth=6, random_state=0
        ),
    }
    for path, make in targets.items():
        if path.exists():
            continue
        data = diabetes if "diabetes" in path.parts else iris
        estimator = make().fit(data.data, data.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(estimator, path)
        built.append(path)
    return built


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "repository"
    for path in build(target):
        print(f"built {path}")
