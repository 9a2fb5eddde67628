"""Python clients for a running Shoal server's control APIs (what the ``shoal`` CLI uses)."""

from .rollouts import RolloutClient, ShoalClientError

__all__ = ["RolloutClient", "ShoalClientError"]
