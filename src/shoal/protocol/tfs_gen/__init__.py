"""Generated from proto/tfserving by scripts/gen_protos.py: do not edit.

The TensorFlow Serving API messages in a private descriptor pool, so that Shoal can live in
one process with tensorflow and tensorflow-serving-api, which register the same names in
protobuf's default pool.
"""

from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

POOL = descriptor_pool.DescriptorPool()
for _well_known in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_well_known.DESCRIPTOR.serialized_pb)
