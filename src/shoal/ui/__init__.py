"""The web dashboard at ``/ui`` on the HTTP port (``shoal serve --no-ui`` turns it off).

- :mod:`.routes`: the pages, their static files (in ``static/``, shipped in the package: no
  CDN) and the JSON endpoints under ``/ui/api``;
- :mod:`.views`: what those endpoints answer, read from the registry, the repository, the
  rollouts and the payload logger;
- :mod:`.series`: the per-model time series the charts draw, sampled from the request
  metrics every couple of seconds by a task on the server's loop.

With the UI on but nobody looking, the only cost is that sampling (a few milliseconds every
interval); with ``--no-ui`` there is none: no routes, no sampling.
"""

from .routes import ui_routes
from .series import SeriesRecorder
from .views import Dashboard, ServerInfo

__all__ = ["Dashboard", "SeriesRecorder", "ServerInfo", "ui_routes"]
