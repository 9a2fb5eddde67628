"""The Seldon protocol codec: every payload kind in, the same kind out, meta and feedback."""

from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

from shoal import InferenceResponse, Tensor, TensorSpec
from shoal.errors import InvalidInput, NotSupported
from shoal.protocol import seldon


def decode(message: dict, inputs: list[TensorSpec] | None = None) -> seldon.SeldonRequest:
    return seldon.decode_request(orjson.dumps(message), inputs or [])


def encode(response: InferenceResponse, kind: seldon.Kind, meta: seldon.Meta | None = None) -> dict:
    return orjson.loads(orjson.dumps(seldon.encode_response(response, kind, meta or seldon.Meta("p")),
                                     option=orjson.OPT_SERIALIZE_NUMPY))


def test_ndarray_with_names_and_meta() -> None:
    message = decode({"data": {"names": ["a", "b"], "ndarray": [[1, 2], [3, 4]]},
                      "meta": {"puid": "req-1", "tags": {"team": "x"}, "routing": {"r": 1}}})
    tensor = message.request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("input-0", "INT64", (2, 2))
    assert tensor.parameters == {"names": ["a", "b"]}
    assert message.request.id == "req-1" and message.kind == "ndarray"
    assert message.meta.tags == {"team": "x"} and message.meta.routing == {"r": 1}


def test_ndarray_takes_the_declared_input_name_and_datatype() -> None:
    message = decode({"data": {"ndarray": [[1, 2]]}}, [TensorSpec("features", "FP32", (-1, 2))])
    tensor = message.request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.data.dtype) == ("features", "FP32", np.float32)
    text = decode({"data": {"ndarray": [["a", "b"]]}}).request.inputs[0]
    assert text.datatype == "BYTES" and text.data.tolist() == [[b"a", b"b"]]


def test_tensor_str_json_and_bin_payloads() -> None:
    tensor = decode({"data": {"tensor": {"shape": [2, 1], "values": [0.5, 1.5]}}})
    assert tensor.kind == "tensor" and tensor.request.inputs[0].data.tolist() == [[0.5], [1.5]]
    text = decode({"strData": "hello"}).request.inputs[0]
    assert text.data.tolist() == [b"hello"] and text.parameters == {"content_type": "str"}
    data = decode({"jsonData": {"a": [1, 2]}}).request.inputs[0]
    assert orjson.loads(data.data[0]) == {"a": [1, 2]} and data.parameters == {"content_type": "json"}
    raw = decode({"binData": base64.b64encode(b"\x00\x01").decode()}).request.inputs[0]
    assert raw.data[0] == b"\x00\x01"


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({}, "needs 'data', 'strData', 'jsonData' or 'binData'"),
        ({"data": {"tensor": {"shape": [3], "values": [1.0]}}}, "has 1 values but shape [3]"),
        ({"data": {"ndarray": [[1, 2], [3]]}}, "ndarray"),
        ({"data": {"ndarray": [["a"], [1]]}}, "mixes strings"),
        ({"binData": "***"}, "base64"),
        ({"data": {"ndarray": [1]}, "meta": {"routing": {"r": "one"}}}, "branch indices"),
        ({"data": {"names": "a", "ndarray": [1]}}, "names"),
    ],
)
def test_bad_messages(message: dict, error: str) -> None:
    with pytest.raises(InvalidInput, match=None) as caught:
        decode(message)
    assert error in str(caught.value)


def test_tftensor_is_not_supported() -> None:
    with pytest.raises(NotSupported):
        decode({"data": {"tftensor": {}}})


def test_a_model_with_several_inputs_is_refused() -> None:
    with pytest.raises(InvalidInput, match="carries one"):
        decode({"data": {"ndarray": [1]}}, [TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "FP64", (-1,))])


def test_answers_mirror_the_request_kind() -> None:
    proba = InferenceResponse([Tensor.from_numpy("p", np.array([[0.25, 0.75]]))], id="r1")
    body = encode(proba, "ndarray", seldon.Meta(None, {"t": 1}, {"router": 0}))
    assert body["data"] == {"names": ["t:0", "t:1"], "ndarray": [[0.25, 0.75]]}
    assert body["meta"]["puid"] == "r1" and body["meta"]["tags"] == {"t": 1}
    assert body["meta"]["routing"] == {"router": 0}
    assert encode(proba, "tensor")["data"]["tensor"] == {"shape": [1, 2], "values": [0.25, 0.75]}
    assert encode(proba, "jsonData")["jsonData"] == [[0.25, 0.75]]
    text = InferenceResponse([Tensor.from_numpy("t", np.array(["HELLO"]))])
    assert encode(text, "strData")["strData"] == "HELLO"
    assert encode(text, "binData")["binData"] == base64.b64encode(b"HELLO").decode()
    as_json = InferenceResponse([Tensor.from_numpy("t", np.array(['{"a": 1}']))])
    assert encode(as_json, "jsonData")["jsonData"] == {"a": 1}
    several = InferenceResponse([Tensor.from_numpy("a", np.array([1])), Tensor.from_numpy("b", np.array(["x"]))])
    assert encode(several, "ndarray")["jsonData"] == {"a": [1], "b": ["x"]}


def test_feedback() -> None:
    feedback = seldon.decode_feedback(orjson.dumps({
        "request": {"meta": {"puid": "from-request"}},
        "response": {"meta": {"routing": {"router": 1}}},
        "reward": 1, "truth": {"data": {"ndarray": [1]}},
    }))
    assert feedback.reward == 1.0 and feedback.meta.routing == {"router": 1}
    assert feedback.meta.puid == "from-request" and feedback.truth == {"data": {"ndarray": [1]}}
    for bad in (b'{"reward": "high"}', b'{"reward": true}', b'{"reward": [1]}'):
        with pytest.raises(InvalidInput, match="'reward' must be a number"):
            seldon.decode_feedback(bad)


def test_feedback_without_reward_is_a_reward_of_0() -> None:
    """proto3 JSON leaves out default values: SeldonClient.feedback(reward=0) sends none."""
    for body in (b'{"response": {"meta": {"puid": "p"}}}', b'{"reward": null}'):
        assert seldon.decode_feedback(body).reward == 0.0


def test_feedback_answer() -> None:
    meta = seldon.Meta("p", routing={"r": 1})
    assert seldon.encode_feedback_answer(meta) == {"meta": {"puid": "p", "routing": {"r": 1}}}
    assert seldon.encode_feedback_answer(seldon.Meta(), duplicate=True) == {
        "meta": {"puid": "", "routing": {}, "tags": {"duplicate": True}}}


def test_error_message_is_only_seldon_status() -> None:
    """A SeldonMessage has no 'error' field: the client would refuse the whole answer."""
    body = seldon.error_message(400, "bad")
    assert body == {"status": {"code": 400, "info": "bad", "reason": "BAD_DATA", "status": "FAILURE"}}


def nested(levels: int) -> bytes:
    return b"[" * levels + b"1" + b"]" * levels


def test_json_is_refused_at_decode_unless_the_answer_can_carry_it_back() -> None:
    """orjson reads 1024 levels but writes only 254: jsonData (one level in the message) and
    meta.tags (three levels: message, meta, tags) are checked where the answer echoes them."""
    deepest = seldon.MAX_WRITTEN_DEPTH - 1
    raw = seldon.decode_request(b'{"jsonData": ' + nested(deepest) + b"}", []).request.inputs[0]
    assert raw.data[0] == nested(deepest)
    tags = b'{"strData": "x", "meta": {"tags": {"t": %s}}}'
    assert seldon.decode_request(tags % nested(deepest - 2), []).meta.tags["t"]
    for body, where in [(b'{"jsonData": ' + nested(deepest + 1) + b"}", "'jsonData'"),
                        (b'{"jsonData": ' + nested(1000) + b"}", "'jsonData'"),
                        (tags % nested(deepest - 1), "'meta.tags'"),
                        (tags % nested(1000), "'meta.tags'")]:
        with pytest.raises(InvalidInput, match=f"{where} nests too deep"):
            seldon.decode_request(body, [])
