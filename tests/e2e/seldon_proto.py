"""Seldon Core's ``SeldonMessage`` and ``Feedback``, to send and read JSON as ``SeldonClient``
(seldon-core 1.18) does, without seldon-core (it pins protobuf<4, numpy<2).

The client writes every message with ``json_format.MessageToJson``: proto3 JSON, which leaves
out default values (``reward=0`` sends no ``reward``). It reads every answer, errors included,
with ``json_format.ParseDict`` into a ``SeldonMessage``, which refuses unknown fields: an
answer with one more field reaches the caller as ``response=None``.

The messages are built here from their fields in seldon-core's ``prediction.proto`` (no protoc
needed); only ``DefaultData.tftensor`` (a TensorFlow proto) is left out.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, struct_pb2
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "shoal_tests.seldon.protos"  # not Seldon's package: nothing else may define it


def _field(name: str, number: int, kind: int, type_name: str = "", repeated: bool = False,
           oneof: int | None = None) -> descriptor_pb2.FieldDescriptorProto:
    field = F(name=name, number=number, type=kind,
              label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        field.type_name = type_name if type_name.startswith(".google") else f".{PACKAGE}.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _map(message: descriptor_pb2.DescriptorProto, name: str, number: int, value_kind: int,
         value_type: str = "") -> None:
    """A ``map<string, V>`` field: a repeated nested ``<Name>Entry`` message."""
    entry = message.nested_type.add(name=f"{name[0].upper()}{name[1:]}Entry")
    entry.options.map_entry = True
    entry.field.extend([_field("key", 1, F.TYPE_STRING), _field("value", 2, value_kind, value_type)])
    message.field.append(_field(name, number, F.TYPE_MESSAGE, f"{message.name}.{entry.name}",
                                repeated=True))


def _build() -> dict[str, type[Message]]:
    file = descriptor_pb2.FileDescriptorProto(
        name="shoal_tests/seldon_prediction.proto", package=PACKAGE, syntax="proto3",
        dependency=[struct_pb2.DESCRIPTOR.name, any_pb2.DESCRIPTOR.name],
    )
    seldon_message = file.message_type.add(name="SeldonMessage")
    seldon_message.oneof_decl.add(name="data_oneof")
    seldon_message.field.extend([
        _field("status", 1, F.TYPE_MESSAGE, "Status"),
        _field("meta", 2, F.TYPE_MESSAGE, "Meta"),
        _field("data", 3, F.TYPE_MESSAGE, "DefaultData", oneof=0),
        _field("binData", 4, F.TYPE_BYTES, oneof=0),
        _field("strData", 5, F.TYPE_STRING, oneof=0),
        _field("jsonData", 6, F.TYPE_MESSAGE, ".google.protobuf.Value", oneof=0),
        _field("customData", 7, F.TYPE_MESSAGE, ".google.protobuf.Any", oneof=0),
    ])
    data = file.message_type.add(name="DefaultData")
    data.oneof_decl.add(name="data_oneof")
    data.field.extend([
        _field("names", 1, F.TYPE_STRING, repeated=True),
        _field("tensor", 2, F.TYPE_MESSAGE, "Tensor", oneof=0),
        _field("ndarray", 3, F.TYPE_MESSAGE, ".google.protobuf.ListValue", oneof=0),
    ])
    tensor = file.message_type.add(name="Tensor")
    tensor.field.extend([_field("shape", 1, F.TYPE_INT32, repeated=True),
                         _field("values", 2, F.TYPE_DOUBLE, repeated=True)])
    meta = file.message_type.add(name="Meta")
    meta.field.append(_field("puid", 1, F.TYPE_STRING))
    _map(meta, "tags", 2, F.TYPE_MESSAGE, ".google.protobuf.Value")
    _map(meta, "routing", 3, F.TYPE_INT32)
    _map(meta, "requestPath", 4, F.TYPE_STRING)
    meta.field.append(_field("metrics", 5, F.TYPE_MESSAGE, "Metric", repeated=True))
    metric = file.message_type.add(name="Metric")
    metric.enum_type.add(name="MetricType").value.extend([
        descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
        for i, n in enumerate(["COUNTER", "GAUGE", "TIMER"])
    ])
    metric.field.extend([_field("key", 1, F.TYPE_STRING),
                         _field("type", 2, F.TYPE_ENUM, "Metric.MetricType"),
                         _field("value", 3, F.TYPE_FLOAT)])
    _map(metric, "tags", 4, F.TYPE_STRING)
    status = file.message_type.add(name="Status")
    status.enum_type.add(name="StatusFlag").value.extend([
        descriptor_pb2.EnumValueDescriptorProto(name="SUCCESS", number=0),
        descriptor_pb2.EnumValueDescriptorProto(name="FAILURE", number=1),
    ])
    status.field.extend([_field("code", 1, F.TYPE_INT32), _field("info", 2, F.TYPE_STRING),
                         _field("reason", 3, F.TYPE_STRING),
                         _field("status", 4, F.TYPE_ENUM, "Status.StatusFlag")])
    feedback = file.message_type.add(name="Feedback")
    feedback.field.extend([_field("request", 1, F.TYPE_MESSAGE, "SeldonMessage"),
                           _field("response", 2, F.TYPE_MESSAGE, "SeldonMessage"),
                           _field("reward", 3, F.TYPE_FLOAT),
                           _field("truth", 4, F.TYPE_MESSAGE, "SeldonMessage")])
    built = descriptor_pool.Default().Add(file)
    return {name: GetMessageClass(built.message_types_by_name[name])
            for name in ("SeldonMessage", "Feedback")}


_CLASSES = _build()
SeldonMessage = _CLASSES["SeldonMessage"]
Feedback = _CLASSES["Feedback"]


def to_json(message: Message) -> dict[str, Any]:
    """What the client sends for a message (``seldon_core.utils.seldon_message_to_json``)."""
    return json_format.MessageToDict(message)


def parse(answer: Any) -> Message:
    """An answer as the client reads it (``seldon_core.utils.json_to_seldon_message``); raises
    ``json_format.ParseError`` where the client would give its caller ``response=None``."""
    return json_format.ParseDict(answer, SeldonMessage())


def feedback_body(request: dict[str, Any], response: dict[str, Any], reward: float) -> dict[str, Any]:
    """``SeldonClient.feedback(request, response, reward)``'s body: the client holds both
    messages as protos (it parsed the response) and writes the Feedback as proto3 JSON."""
    message = Feedback(request=json_format.ParseDict(request, SeldonMessage()),
                       response=parse(response), reward=reward)
    return to_json(message)
