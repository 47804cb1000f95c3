"""The OIP v2 codec and the request parameters, without a server."""

import json

import numpy as np
import pytest

from densepure.certify.tasks import CertifyTask, PredictTask, SequentialTask
from densepure.errors import InputError
from densepure.serve.params import (
    DEFAULT_PRIORITY,
    PRIORITY_LEVELS,
    ServeMode,
    ServerDefaults,
    parse_params,
    task_for,
)
from densepure.serve.protocol import (
    ProtocolError,
    Tensor,
    decode_response,
    encode_request,
    encode_response,
    parse_infer_request,
)

SHAPE = (1, 8, 8)
DEFAULTS = ServerDefaults(n0=50, n=1000, alpha=0.001, sigma=0.25, max_n0=100, max_n=5000, max_batch=4,
                          allow_client_seed=False)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_request_round_trip(binary, dtype):
    rng = np.random.default_rng(0)
    images = (rng.random((3, *SHAPE)) * (255 if dtype == np.uint8 else 1)).astype(dtype)
    body, headers = encode_request(images, {"mode": "certify", "n": 10}, "r1", binary=binary)
    parsed = parse_infer_request(body, headers.get("inference-header-content-length"), SHAPE, 4)
    expect = images.astype(np.float32) / (255 if dtype == np.uint8 else 1)
    assert parsed.images.dtype == np.float32 and parsed.images.shape == (3, *SHAPE)
    np.testing.assert_array_equal(parsed.images, expect)
    assert parsed.id == "r1" and parsed.parameters["n"] == 10


def _binary_body(raw: bytes, datatype: str = "FP32") -> tuple[bytes, str]:
    header = json.dumps({"inputs": [{"name": "image", "datatype": datatype, "shape": [1, *SHAPE],
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, str(len(header))


@pytest.mark.parametrize("values,message", [
    ([1.5], "must be in [0, 1]"), ([-0.25], "must be in [0, 1]"), ([float("nan")], "NaN or inf"),
    ([float("inf")], "NaN or inf"), ([1e-40], "subnormal"),
])
def test_binary_fp32_is_little_endian_and_in_the_unit_range(values, message):
    pixels = np.full(64, 0.5, dtype="<f4")
    pixels[: len(values)] = values
    with pytest.raises(ProtocolError, match=message.replace("[", r"\[")):
        parse_infer_request(*_binary_body(pixels.tobytes()), SHAPE, 4)


def test_a_big_endian_image_is_refused_unless_all_black():
    """Every 8-bit level k/255 but 0, sent big-endian, reads as NaN, inf, a value outside [0, 1] or a subnormal."""
    for k in range(1, 256):
        image = np.zeros(64, dtype=">f4")
        image[7] = k / 255
        with pytest.raises(ProtocolError, match="0, 1|subnormal|NaN or inf"):
            parse_infer_request(*_binary_body(image.tobytes()), SHAPE, 4)
    little = (np.arange(64) / 63).astype("<f4")  # the same levels little-endian: accepted exactly
    np.testing.assert_array_equal(parse_infer_request(*_binary_body(little.tobytes()), SHAPE, 4).images.ravel(), little)
    pixels = np.arange(64, dtype=np.uint8)  # UINT8 has no byte order; its range is the type's
    assert parse_infer_request(*_binary_body(pixels.tobytes(), "UINT8"), SHAPE, 4).images.max() == np.float32(63 / 255)


def test_nested_json_data_is_row_major():
    images = np.arange(2 * 64, dtype=np.float32).reshape(2, *SHAPE) / 200
    body = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [2, 1, 8, 8],
                                   "data": images.tolist()}]}).encode()
    np.testing.assert_array_equal(parse_infer_request(body, None, SHAPE, 4).images, images)


def test_response_round_trip_json_and_binary():
    tensors = [Tensor("label", "INT64", np.array([3, -1])), Tensor("certified", "BOOL", np.array([True, False])),
               Tensor("radius", "FP32", np.array([0.25, 0.0], dtype=np.float32))]
    for binary in (set(), {"label", "certified"}, {"label", "certified", "radius"}):
        body, headers = encode_response({"model_name": "digits"}, tensors, binary)
        obj, out = decode_response(body, headers.get("inference-header-content-length"))
        assert obj["model_name"] == "digits"
        for t in tensors:
            np.testing.assert_array_equal(out[t.name], t.data)
            assert ("data" in next(o for o in obj["outputs"] if o["name"] == t.name)) == (t.name not in binary)


@pytest.mark.parametrize("images,message", [
    (np.full((1, *SHAPE), np.nan, dtype=np.float32), "NaN or inf"),
    (np.full((1, *SHAPE), 2.0, dtype=np.float32), "must be in [0, 1]"),
    (np.zeros((5, *SHAPE), dtype=np.float32), "at most 4 images"),
    (np.zeros((1, 1, 8, 9), dtype=np.float32), "must have shape [B, 1, 8, 8]"),
])
def test_bad_tensors_name_the_problem(images, message):
    for binary in (False, True):
        body, headers = encode_request(images, binary=binary)
        with pytest.raises(ProtocolError, match=message.replace("[", r"\[")):
            parse_infer_request(body, headers.get("inference-header-content-length"), SHAPE, 4)


def test_parameters_defaults_and_tasks():
    p = parse_params({}, DEFAULTS, batch=2)
    assert p.mode is ServeMode.CERTIFY_RADIUS and p.radius == 0.25 and (p.n0, p.n, p.alpha) == (50, 1000, 0.001)
    assert task_for(p) == SequentialTask(50, 0.25, 0.001, n_max=1000) and task_for(p).max_draws == 1050
    assert task_for(parse_params({"mode": "certify", "n": 200, "alpha": 1e-4}, DEFAULTS, 1)) == CertifyTask(50, 200,
                                                                                                            1e-4)
    assert task_for(parse_params({"mode": "predict", "n": 30}, DEFAULTS, 1)) == PredictTask(30, 0.001)
    assert p.seed is None and p.deadline_ms is None


def test_triton_timeout_is_a_deadline_and_priority_a_level():
    assert parse_params({"timeout": 250_000}, DEFAULTS, 1).deadline_ms == 250.0  # microseconds
    assert parse_params({"timeout": 0}, DEFAULTS, 1).deadline_ms is None  # Triton's "no timeout"
    assert parse_params({}, DEFAULTS, 1).priority == DEFAULT_PRIORITY
    assert parse_params({"priority": 0}, DEFAULTS, 1).priority == DEFAULT_PRIORITY  # 0: the default level
    assert [parse_params({"priority": k}, DEFAULTS, 1).priority for k in (1, PRIORITY_LEVELS)] == [1, PRIORITY_LEVELS]
    assert parse_params({"priority": 2}, DEFAULTS, 1, job=True).priority == 2  # jobs queue by priority too
    with pytest.raises(InputError, match="jobs take no timeout"):
        parse_params({"timeout": 10}, DEFAULTS, batch=1, job=True)


@pytest.mark.parametrize("raw,message", [
    ({"n": 5001}, "[1, 5000]"), ({"n0": 0}, "n0"), ({"alpha": 0.01}, "server's alpha"), ({"n": 10.0}, "integer"),
    ({"n": True}, "integer"), ({"mode": "predict", "n0": 5}, "unknown parameter 'n0'"), ({"mode": "x"}, "mode"),
    ({"foo": 1}, "unknown parameter 'foo'"), ({"timeout": 5.0}, "timeout must be an integer"),
    ({"timeout": 5, "deadline_ms": 5}, "give one"), ({"priority": 10}, "priority must be in [0, 9]"),
    ({"priority": -1}, "priority"), ({"seed": 1}, "allow-client-seed"),
    ({"radius": -1.0}, "radius"), ({"deadline_ms": 0}, "deadline_ms"), ({"binary_data_output": 1}, "true or false"),
])
def test_bad_parameters_name_the_problem(raw, message):
    with pytest.raises(InputError, match=message.replace("[", r"\[")):
        parse_params(raw, DEFAULTS, batch=1)


def test_client_seed_and_noise_ids_fit_the_key():
    audit = ServerDefaults(**{**DEFAULTS.__dict__, "allow_client_seed": True})
    p = parse_params({"seed": 2**64 - 1, "noise_id": 2**24 - 3}, audit, batch=3)
    assert (p.seed, p.noise_id) == (2**64 - 1, 2**24 - 3)
    with pytest.raises(InputError, match="noise_id"):
        parse_params({"seed": 1, "noise_id": 2**24 - 2}, audit, batch=3)
    with pytest.raises(InputError, match="jobs take no deadline_ms"):
        parse_params({"deadline_ms": 10}, DEFAULTS, batch=1, job=True)
