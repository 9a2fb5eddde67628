"""One exception family for every failure a client can see.

Each error carries its HTTP status and gRPC status code, so the REST and gRPC transports
translate them the same way and no handler invents its own mapping.
"""

from __future__ import annotations

from typing import Any


class _GrpcCode:
    """A class attribute that is a ``grpc.StatusCode``, looked up on first use: importing
    grpc costs a tenth of a second that code without gRPC (the ``shoal`` client commands)
    should not pay."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Any) -> Any:
        import grpc

        return grpc.StatusCode[self.name]


class ShoalError(Exception):
    """Base class: the message is what the client reads."""

    http_status = 500
    grpc_code: Any = _GrpcCode("INTERNAL")

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        #: Headers (gRPC: trailing metadata) whoever raised or passed on this error adds to
        #: the answer, e.g. the routing a graph request took before it failed.
        self.context: dict[str, str] = {}

    @property
    def headers(self) -> dict[str, str]:
        """Extra REST response headers (gRPC trailing metadata) that come with this error."""
        return self.context

    def __str__(self) -> str:
        return self.message


class InvalidInput(ShoalError):
    """The request is malformed or does not match the model's inputs."""

    http_status = 400
    grpc_code: Any = _GrpcCode("INVALID_ARGUMENT")


class Unauthorized(ShoalError):
    """A control route (repository, rollouts) without the server's admin token."""

    http_status = 401
    grpc_code: Any = _GrpcCode("UNAUTHENTICATED")

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="shoal"', **self.context}


class Forbidden(ShoalError):
    """A control route called by a page of another site (a cross-site browser request)."""

    http_status = 403
    grpc_code: Any = _GrpcCode("PERMISSION_DENIED")


class ModelNotFound(ShoalError):
    http_status = 404
    grpc_code: Any = _GrpcCode("NOT_FOUND")


class PayloadTooLarge(ShoalError):
    http_status = 413
    grpc_code: Any = _GrpcCode("RESOURCE_EXHAUSTED")


class Unavailable(ShoalError):
    """The model or server exists but cannot answer now (loading, failed, draining)."""

    http_status = 503
    grpc_code: Any = _GrpcCode("UNAVAILABLE")


class Overloaded(Unavailable):
    """A model's in-flight limit is reached: come back shortly (503 + Retry-After)."""

    grpc_code: Any = _GrpcCode("RESOURCE_EXHAUSTED")
    retry_after = 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after), **self.context}


class DeadlineExceeded(ShoalError):
    http_status = 504
    grpc_code: Any = _GrpcCode("DEADLINE_EXCEEDED")


class NotSupported(ShoalError):
    http_status = 501
    grpc_code: Any = _GrpcCode("UNIMPLEMENTED")


class ModelFailure(ShoalError):
    """The model's own code raised: the client gets the message, the server stays up."""

    http_status = 500
    grpc_code: Any = _GrpcCode("INTERNAL")


class LoadError(ShoalError):
    """A model folder could not be turned into a ready model."""

    http_status = 400
    grpc_code: Any = _GrpcCode("INVALID_ARGUMENT")
