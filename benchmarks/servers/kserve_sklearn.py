"""KServe's Python model server serving every REPO/<name>/model.joblib, as KServe's own
``sklearnserver`` does (that runtime is not published on PyPI, so this is the same few lines:
a ``kserve.Model`` whose ``load`` is ``joblib.load`` and whose ``predict`` calls the
estimator's ``predict``, served by ``kserve.ModelServer``).

    venv-kserve/bin/python benchmarks/servers/kserve_sklearn.py --model_dir REPO \
        --http_port 8080 --grpc_port 8081

Every other ``kserve.ModelServer`` option (``--workers``, ``--max_threads``...) is accepted as
KServe parses them; defaults are KServe's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, Union

import joblib
import kserve
from kserve import InferRequest, InferResponse, Model, ModelServer
from kserve.errors import InferenceError
from kserve.utils.utils import get_predict_input, get_predict_response


class SKLearnModel(Model):
    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name)
        self.path = path
        self.ready = False

    def load(self) -> bool:
        self._model = joblib.load(self.path)
        self.ready = True
        return self.ready

    def predict(
        self, payload: Union[Dict, InferRequest], headers: Dict[str, str] = None
    ) -> Union[Dict, InferResponse]:
        try:
            result = self._model.predict(get_predict_input(payload))
            return get_predict_response(payload, result, self.name)
        except Exception as exc:  # KServe's sklearnserver maps every failure the same way
            raise InferenceError(str(exc)) from exc


def main() -> None:
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--model_dir", required=True, help="one folder per model with model.joblib")
    args, _ = parser.parse_known_args()
    models = []
    for folder in sorted(Path(args.model_dir).iterdir()):
        artifact = folder / "model.joblib"
        if artifact.is_file():
            model = SKLearnModel(folder.name, artifact)
            model.load()
            models.append(model)
    ModelServer().start(models)


if __name__ == "__main__":
    main()
