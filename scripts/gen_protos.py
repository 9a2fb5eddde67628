"""Regenerate the committed gRPC Python modules from proto/*.proto.

The generated code is committed so that installing Shoal needs no protoc; run this after
editing a .proto file (it needs the `dev` extra's grpcio-tools).
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "shoal" / "protocol" / "grpc_gen"


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for proto in sorted(PROTO_DIR.glob("*.proto")):
        code = protoc.main(
            ["protoc", f"-I{PROTO_DIR}", f"--python_out={OUT_DIR}", f"--pyi_out={OUT_DIR}",
             f"--grpc_python_out={OUT_DIR}", str(proto)]
        )
        if code:
            return code
    # protoc writes absolute imports between generated modules; make them package-relative.
    for path in OUT_DIR.glob("*_pb2*.py"):
        text = re.sub(r"^import (\w+_pb2) as", r"from . import \1 as", path.read_text(), flags=re.M)
        # A private descriptor pool: tritonclient (or any other V2 client) registers the same
        # `inference.*` symbols in the default pool, and both must live in one process.
        text = text.replace("_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()")
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
