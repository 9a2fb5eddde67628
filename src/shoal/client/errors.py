"""The one error the clients raise."""

from __future__ import annotations


class ShoalClientError(Exception):
    """The server refused (``status``: its HTTP status, or the HTTP status a gRPC code
    stands for; ``code``: the gRPC status name over gRPC) or could not be reached
    (``status`` 0)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return self.message


#: gRPC status name -> the HTTP status Shoal answers for the same error over REST.
GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413, "INTERNAL": 500, "UNIMPLEMENTED": 501, "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
