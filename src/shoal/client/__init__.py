"""Python clients for a running Shoal server (what the ``shoal`` client commands use).

- :class:`Client` / :class:`AsyncClient`: models, metadata, readiness, inference (numpy in
  and out) and repository load/unload, over V2 REST or gRPC;
- :class:`RolloutClient`: a model's rollout (``/v2/models/{m}/rollout``).
"""

from .errors import ShoalClientError
from .inference import AsyncClient, Client, InferResult
from .rollouts import RolloutClient

__all__ = ["AsyncClient", "Client", "InferResult", "RolloutClient", "ShoalClientError"]
