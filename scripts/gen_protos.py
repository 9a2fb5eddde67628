"""Regenerate the committed gRPC Python modules from the .proto files under proto/.

- ``proto/*.proto`` (the V2 / Open Inference Protocol service) -> ``src/shoal/protocol/grpc_gen``.
- ``proto/tfserving/**.proto`` (the TensorFlow Serving API, kept at its published paths such
  as ``tensorflow_serving/apis/predict.proto``) -> ``src/shoal/protocol/tfs_gen``, flattened
  into one package (``predict_pb2.py``, ``tensor_pb2.py``, ...).

The generated code is committed so that installing Shoal needs no protoc; run this after
editing a .proto file (it needs the `dev` extra's grpcio-tools):

    python scripts/gen_protos.py

Two rewrites make the output safe to import next to the real clients:

- imports between generated modules become package-relative, so Shoal never imports a
  top-level ``tensorflow`` or ``tensorflow_serving`` module of its own;
- descriptors go to a private pool instead of protobuf's default one. tritonclient registers
  the same ``inference.*`` names, and tensorflow / tensorflow-serving-api the same
  ``tensorflow.*`` names, in the default pool; two definitions of one name there is an error,
  and Shoal must live in one process with those clients (in-process tests, notebooks). The TF
  Serving modules share one pool (they import each other); it also holds the well-known types
  they use (``google.protobuf.Any``, ``Int64Value``). Clients interoperate on the wire and on
  type names (an ``Any``'s type URL), not on pools.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import sys
import tempfile

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "shoal" / "protocol" / "grpc_gen"
TFS_PROTO_DIR = PROTO_DIR / "tfserving"
TFS_OUT_DIR = ROOT / "src" / "shoal" / "protocol" / "tfs_gen"
#: google/protobuf/*.proto, shipped with grpcio-tools.
WELL_KNOWN_DIR = pathlib.Path(grpc_tools.__file__).parent / "_proto"

TFS_INIT = '''"""Generated from proto/tfserving by scripts/gen_protos.py: do not edit.

The TensorFlow Serving API messages in a private descriptor pool, so that Shoal can live in
one process with tensorflow and tensorflow-serving-api, which register the same names in
protobuf's default pool.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
'''


def main() -> int:
    return generate_v2() or generate_tfserving()


def generate_v2() -> int:
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


def generate_tfserving() -> int:
    protos = sorted(TFS_PROTO_DIR.rglob("*.proto"))
    # Proto package folders (tensorflow/core/framework, tensorflow_serving/apis, ...) as the
    # dotted module paths protoc imports them by.
    packages = {
        ".".join(p.parent.relative_to(TFS_PROTO_DIR).parts) for p in protos
    }
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            ["protoc", f"-I{TFS_PROTO_DIR}", f"-I{WELL_KNOWN_DIR}", f"--python_out={tmp}",
             f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *map(str, protos)]
        )
        if code:
            return code
        generated = sorted(
            p for p in pathlib.Path(tmp).rglob("*")
            if p.suffix in (".py", ".pyi") and not _empty_grpc_module(p)
        )
        names = [p.name for p in generated]
        clashes = {n for n in names if names.count(n) > 1}
        if clashes:
            print(f"flattened module names clash: {sorted(clashes)}", file=sys.stderr)
            return 1
        if TFS_OUT_DIR.exists():
            shutil.rmtree(TFS_OUT_DIR)
        TFS_OUT_DIR.mkdir(parents=True)
        (TFS_OUT_DIR / "__init__.py").write_text(TFS_INIT)
        for path in generated:
            (TFS_OUT_DIR / path.name).write_text(_tfs_rewrite(path.read_text(), packages))
    return 0


def _empty_grpc_module(path: pathlib.Path) -> bool:
    """protoc writes a ``_pb2_grpc`` module for every file; only those with a service matter."""
    return path.name.endswith("_pb2_grpc.py") and "class " not in path.read_text()


def _tfs_rewrite(text: str, packages: set[str]) -> str:
    def relative(match: re.Match[str]) -> str:
        if match.group(1) not in packages:
            return match.group(0)  # google.protobuf and friends stay absolute
        return f"from . import {match.group(2)}"

    text = re.sub(r"^from ([\w.]+) import (\w+_pb2)\b", relative, text, flags=re.MULTILINE)
    text = text.replace(
        "from google.protobuf import descriptor_pool as _descriptor_pool",
        "from . import POOL as _POOL",
    )
    text = text.replace("_descriptor_pool.Default()", "_POOL")
    # Classes report the module they really live in (the flattened one).
    return re.sub(
        r"(_builder\.BuildTopDescriptorsAndMessages\(DESCRIPTOR, )'[\w.]+'", r"\1__name__", text
    )


if __name__ == "__main__":
    sys.exit(main())
