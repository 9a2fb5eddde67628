"""The error of a server without the ``explain`` extra."""

from __future__ import annotations

from typing import Any

from ..errors import NotSupported, _GrpcCode

INSTALL = "pip install 'shoal[explain]'"


class ExplainerUnavailable(NotSupported):
    """Explanations need the optional ``explain`` extra (shap, matplotlib): HTTP 501, gRPC
    UNIMPLEMENTED. The message names the extra and its install command."""

    http_status = 501
    grpc_code: Any = _GrpcCode("UNIMPLEMENTED")

    @classmethod
    def missing(cls, module: str) -> ExplainerUnavailable:
        return cls(
            f"explanations need the Python package {module!r}, which this server does not "
            f"have: install the explain extra ({INSTALL})"
        )
