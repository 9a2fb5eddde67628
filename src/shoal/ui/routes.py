"""The dashboard's routes, on the HTTP port beside the APIs (unless ``--no-ui``).

- ``GET /ui`` (and ``/ui/``): the overview page; ``/ui/models/{name}``, ``/ui/graphs/{name}``
  and ``/ui/rollouts/{name}``: the model, graph and rollout pages (each reads the name from
  its own path);
- ``GET /ui/static/{path}``: the pages' scripts, styles and the vendored chart library, from
  the package's ``static`` folder (nothing from a CDN);
- ``GET /ui/api/overview``, ``/ui/api/models/{name}``, ``/ui/api/graphs/{name}``: the JSON the
  pages draw (:mod:`.views`); ``?since=T`` (wall-clock seconds) keeps only the series points
  after T, so a page that polls need not fetch five minutes of points each time.

All of them only read, and need no token; the pages change things through the control routes
(repository load/unload, rollouts), which need it when the server has one. Errors are
``{"error": ...}`` like every other route.
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import InvalidInput
from ..protocol import v2_json
from .views import Dashboard

STATIC = Path(__file__).resolve().parent / "static"
JSON = "application/json"
#: Content types by suffix (the platform's mimetypes table may lack some, or differ).
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
#: Pages and the dashboard's own files are checked on every load (an upgraded server serves
#: its new files at once, a 304 otherwise); vendored libraries change only with their version.
REVALIDATE = "no-cache"
LONG = "public, max-age=86400"
#: Cache-Control of the JSON answers: always fresh.
NO_STORE = "no-store"


class _Files:
    """Static files read once and kept in memory (a few hundred KiB), re-read when changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, tuple[tuple[int, int], bytes, str]] = {}

    def find(self, relative: str) -> Path | None:
        """The file under the root that ``relative`` names; None for anything else (a
        missing file, a folder, ``..``, an absolute path, a hidden file)."""
        if not relative or "\x00" in relative or "\\" in relative:
            return None
        parts = relative.split("/")
        if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            return None
        try:
            path = (self.root / relative).resolve()
            root = self.root.resolve()
        except (OSError, RuntimeError):
            return None
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def response(self, request: Request, path: Path, cache_control: str) -> Response:
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is None or cached[0] != signature:
            content = path.read_bytes()
            etag = '"' + hashlib.sha1(content).hexdigest()[:20] + '"'
            cached = self._cache[path] = (signature, content, etag)
        _, content, etag = cached
        headers = {"cache-control": cache_control, "etag": etag,
                   "x-content-type-options": "nosniff",
                   # The pages hold buttons that change the server: never inside another
                   # site's frame (clickjacking).
                   "x-frame-options": "DENY",
                   "content-security-policy": "frame-ancestors 'none'"}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        media_type = TYPES.get(path.suffix.lower()) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        return Response(content, media_type=media_type, headers=headers)


def _json(value: object) -> Response:
    return Response(v2_json.dumps(value), media_type=JSON, headers={"cache-control": NO_STORE})


def _since(request: Request) -> float | None:
    """``?since=T`` (wall-clock seconds): only the series points after T, for a page that
    has the earlier ones already."""
    text = request.query_params.get("since")
    if text is None or text == "":
        return None
    try:
        since = float(text)
    except ValueError:
        raise InvalidInput(f"'since' must be a number of seconds, not {text[:40]!r}") from None
    if not math.isfinite(since):
        raise InvalidInput("'since' must be a finite number of seconds")
    return since


def ui_routes(dashboard: Dashboard, static: Path = STATIC) -> list[Route]:
    files = _Files(static)
    looked = dashboard.series.touch  # every dashboard request: someone is looking

    def page(filename: str) -> object:
        async def handle(request: Request) -> Response:
            looked()
            path = files.find(filename)
            if path is None:
                raise HTTPException(404, f"Not Found (the dashboard page {filename} is not installed)")
            return files.response(request, path, REVALIDATE)

        return handle

    async def static_file(request: Request) -> Response:
        relative = request.path_params["path"]
        path = files.find(relative)
        if path is None:
            raise HTTPException(404, "Not Found")
        return files.response(request, path, LONG if relative.startswith("vendor/") else REVALIDATE)

    async def overview(request: Request) -> Response:
        looked()
        return _json(dashboard.overview(_since(request)))

    async def model(request: Request) -> Response:
        looked()
        return _json(await dashboard.model(request.path_params["name"], _since(request),
                                           request.headers.get("authorization")))

    async def graph(request: Request) -> Response:
        looked()
        return _json(await dashboard.graph(request.path_params["name"], _since(request)))

    return [
        Route("/ui", page("overview.html"), methods=["GET"]),
        Route("/ui/", page("overview.html"), methods=["GET"]),
        Route("/ui/models/{name}", page("model.html"), methods=["GET"]),
        Route("/ui/graphs/{name}", page("graph.html"), methods=["GET"]),
        Route("/ui/rollouts/{name}", page("rollout.html"), methods=["GET"]),
        Route("/ui/static/{path:path}", static_file, methods=["GET"]),
        Route("/ui/api/overview", overview, methods=["GET"]),
        Route("/ui/api/models/{name}", model, methods=["GET"]),
        Route("/ui/api/graphs/{name}", graph, methods=["GET"]),
    ]
