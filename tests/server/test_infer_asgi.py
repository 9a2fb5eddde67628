from shoal.server.infer_asgi import match_infer_path


def test_inference_paths() -> None:
    assert match_infer_path("/v2/models/m/infer") == ("v2", "m", None)
    assert match_infer_path("/v2/models/m/versions/3/infer") == ("v2", "m", "3")
    assert match_infer_path("/v1/models/m:predict") == ("v1", "m", None)
    assert match_infer_path("/v1/models/m/versions/2:predict") == ("v1", "m", "2")


def test_other_paths_fall_through() -> None:
    for path in ("/v2/models/infer", "/v2/models//infer", "/v2/models/m/x/infer",
                 "/v2/models/m/versions//infer", "/v1/models/m:explain", "/v2/models/m"):
        assert match_infer_path(path) is None, path
