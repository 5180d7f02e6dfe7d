"""TensorFlow Serving's REST API, used the way TF Serving clients use it."""

import base64
import io

import numpy as np
import pytest
import requests
from helpers import sample
from PIL import Image


def b64(data):
    return {"b64": base64.b64encode(data).decode()}


def pixel_array(digit, side=32, mode="L"):
    image = (
        Image.open(io.BytesIO(sample(digit)))
        .convert(mode)
        .resize((side, side), Image.Resampling.BILINEAR)
    )
    array = np.asarray(image)
    return (array[..., None] if mode == "L" else array).tolist()


def assert_vectors(body_predictions, digits):
    assert len(body_predictions) == len(digits)
    for vector, digit in zip(body_predictions, digits, strict=True):
        assert len(vector) == 10 and abs(sum(vector) - 1) < 1e-4
        assert int(np.argmax(vector)) == digit


def test_b64_instances(stack):
    url = f"{stack.url}/v1/models/digits:predict"
    response = requests.post(url, json={"instances": [b64(sample(d)) for d in (3, 1, 4)]})
    assert response.status_code == 200, response.text
    assert list(response.json()) == ["predictions"]
    assert_vectors(response.json()["predictions"], [3, 1, 4])


def test_pixel_array_instances_of_any_size(stack):
    url = f"{stack.url}/v1/models/digits/versions/1:predict"
    instances = [
        pixel_array(5),
        np.squeeze(pixel_array(9)).tolist(),
        pixel_array(2, side=64, mode="RGB"),
        {"pixels": pixel_array(7)},
    ]
    response = requests.post(url, json={"instances": instances})
    assert_vectors(response.json()["predictions"], [5, 9, 2, 7])


def test_columnar_inputs(stack):
    url = f"{stack.url}/v1/models/digits:predict"
    for inputs in ([b64(sample(6)), b64(sample(8))], {"pixels": [b64(sample(6)), pixel_array(8)]}):
        body = requests.post(url, json={"inputs": inputs}).json()
        assert_vectors(body["outputs"], [6, 8])  # as TF Serving answers
        assert body["predictions"] == body["outputs"]  # as Beagle's contract says


def test_status_and_metadata(stack):
    for path in ("/v1/models/digits", "/v1/models/digits/versions/1"):
        assert requests.get(stack.url + path).json() == {
            "model_version_status": [
                {
                    "version": "1",
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
            ]
        }
    metadata = requests.get(stack.url + "/v1/models/digits/metadata").json()
    assert metadata["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in signature["inputs"]["pixels"]["tensor_shape"]["dim"]]
    assert dims == [-1, 32, 32, 1] and signature["inputs"]["pixels"]["dtype"] == "DT_UINT8"
    outputs = signature["outputs"]["probabilities"]["tensor_shape"]["dim"]
    assert [int(d["size"]) for d in outputs] == [-1, 10]
    versioned = requests.get(stack.url + "/v1/models/digits/versions/1/metadata").json()
    assert versioned == metadata


@pytest.mark.parametrize(
    "path,body,status,words",
    [
        ("/v1/models/nope:predict", {"instances": [[[0]]]}, 404, "'nope' is not served"),
        ("/v1/models/digits/versions/9:predict", {"instances": [[[0]]]}, 404, "no version 9"),
        ("/v1/models/digits:predict", {"instances": [], "inputs": []}, 400, "exactly one"),
        ("/v1/models/digits:predict", {"instances": []}, 400, "non-empty"),
        ("/v1/models/digits:predict", {"instances": [{"b64": "%%%"}]}, 400, "base64"),
        ("/v1/models/digits:predict", {"instances": [b64(b"text")]}, 400, "not an image"),
        ("/v1/models/digits:predict", {"instances": [[[1, 2], [3]]]}, 400, "regular"),
        ("/v1/models/digits:predict", {"instances": [[[[[1]]]]]}, 400, "height x width"),
        ("/v1/models/digits:predict", {"instances": [[[300]]]}, 400, "0 to 255"),
        ("/v1/models/digits:predict", {"instances": ["a string"]}, 400, "pixel array"),
        ("/v1/models/digits:predict", {"instances": [{"a": 1, "b": 2}]}, 400, "one input"),
        (
            "/v1/models/digits:predict",
            {"signature_name": "other", "instances": [[[1]]]},
            400,
            "serving_default",
        ),
        ("/v1/models/digits:predict", [1, 2], 400, "JSON object"),
    ],
)
def test_errors_have_tf_servings_shape(stack, path, body, status, words):
    response = requests.post(stack.url + path, json=body)
    assert response.status_code == status
    assert list(response.json()) == ["error"] and words in response.json()["error"]


def test_unknown_models_and_versions_in_status(stack):
    assert requests.get(stack.url + "/v1/models/nope").status_code == 404
    missing = requests.get(stack.url + "/v1/models/digits/versions/4")
    assert missing.status_code == 404 and "version 4" in missing.json()["error"]
