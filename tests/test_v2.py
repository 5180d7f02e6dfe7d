"""The Open Inference Protocol (KServe v2), driven by Triton's own client (tritonclient[http])
as a Triton user would point it at Beagle: liveness, readiness, metadata, configuration,
inference with encoded images (BYTES) and with pixels (UINT8), in JSON and in binary, a
batch, the classification parameter, statistics, and the errors the client sees. Also the
README's example, run as written, and the bodies the client never sends."""

import base64
import io
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from helpers import sample, wait_for
from PIL import Image
from tritonclient.utils import InferenceServerException

from app.config import PROJECT_ROOT

DIGITS = (3, 1, 4)


@pytest.fixture(scope="module")
def triton(stack):
    return httpclient.InferenceServerClient(url=stack.url.removeprefix("http://"))


def jpeg(digit):
    out = io.BytesIO()
    Image.open(io.BytesIO(sample(digit))).convert("L").save(out, "JPEG", quality=95)
    return out.getvalue()


def pixels(digit):
    image = Image.open(io.BytesIO(sample(digit))).convert("L").resize((32, 32))
    return np.asarray(image, np.uint8)[..., None]


def images_input(digits, binary):
    """JPEG bytes as a BYTES tensor: raw in binary, base64 text in JSON (JSON carries
    strings; KServe's examples send images this way)."""
    encoded = [jpeg(d) if binary else base64.b64encode(jpeg(d)) for d in digits]
    tensor = httpclient.InferInput("image", [len(digits)], "BYTES")
    tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=binary)
    return tensor


def test_liveness_readiness_metadata_and_configuration(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("digits") and not triton.is_model_ready("digits", "9")
    server = triton.get_server_metadata()
    model = triton.get_model_metadata("digits")
    config = triton.get_model_config("digits")
    print(f"\nserver: {server}\nmodel: {model}\nconfig: {json.dumps(config)[:400]}")
    assert server["name"] == "beagle"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    assert model["name"] == "digits" and model["versions"] == ["1"]
    assert model["inputs"] == [
        {"name": "image", "datatype": "BYTES", "shape": [-1]},
        {"name": "pixels", "datatype": "UINT8", "shape": [-1, 32, 32, 1]},
    ]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert config["max_batch_size"] >= 1
    assert [i["data_type"] for i in config["input"]] == ["TYPE_STRING", "TYPE_UINT8"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_batch_of_jpeg_images(triton, binary):
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = triton.infer("digits", [images_input(DIGITS, binary)], outputs=outputs)
    probabilities = result.as_numpy("probabilities")
    response = result.get_response()
    print(f"\n{'binary' if binary else 'JSON'}: {json.dumps(response)[:300]}")
    assert probabilities.shape == (3, 10) and probabilities.dtype == np.float32
    assert list(probabilities.argmax(axis=1)) == list(DIGITS)
    assert ("binary_data_size" in json.dumps(response)) == binary
    assert response["model_name"] == "digits" and response["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_pixels_at_the_models_size(triton, binary):
    tensor = httpclient.InferInput("pixels", [2, 32, 32, 1], "UINT8")
    tensor.set_data_from_numpy(np.stack([pixels(5), pixels(9)]), binary_data=binary)
    result = triton.infer("digits", [tensor], model_version="1", request_id="req-59")
    assert list(result.as_numpy("probabilities").argmax(axis=1)) == [5, 9]
    assert result.get_response()["id"] == "req-59"


def test_the_classification_parameter_gives_score_index_label(triton):
    top = httpclient.InferRequestedOutput("probabilities", class_count=3)
    result = triton.infer("digits", [images_input([7, 2], binary=True)], outputs=[top])
    classes = result.as_numpy("probabilities")
    print(f"\nclassification: {classes}")
    assert classes.shape == (2, 3)
    best = [row[0].decode().split(":") for row in classes]
    assert [(index, label) for _, index, label in best] == [("7", "7"), ("2", "2")]
    assert all(re.fullmatch(r"\d\.\d{6}", score) for score, _, _ in best)


def test_errors_the_client_raises(triton):
    with pytest.raises(InferenceServerException) as unknown:
        triton.infer("no-such-model", [images_input([7], binary=True)])
    assert unknown.value.status() == "404" and "not served" in unknown.value.message()
    corrupt = httpclient.InferInput("image", [1], "BYTES")
    corrupt.set_data_from_numpy(np.array([jpeg(7)[:300]], dtype=np.object_))
    with pytest.raises(InferenceServerException) as bad:
        triton.infer("digits", [corrupt])
    print(f"\nunknown model: {unknown.value}\ncorrupt image: {bad.value}")
    assert bad.value.status() == "400" and "image'[0]" in bad.value.message()


def test_statistics_count_the_inferences(triton):
    before = triton.get_inference_statistics("digits")["model_stats"][0]["inference_count"]
    triton.infer("digits", [images_input(DIGITS, binary=True)])

    def counted():
        stats = triton.get_inference_statistics("digits")["model_stats"][0]
        return stats if stats["inference_count"] >= before + 3 else None

    stats = wait_for(counted, 10, "the inferences counted")  # metrics flush once a second
    assert stats["execution_count"] >= 1 and stats["inference_stats"]["compute_infer"]["ns"] > 0
    assert stats["last_inference"] > 0
    every = triton.get_inference_statistics()["model_stats"]
    assert "digits" in [entry["name"] for entry in every]


def test_the_readme_example_as_written(stack):
    readme = (PROJECT_ROOT / "README.md").read_text()
    example = re.search(r"```python\n(import numpy.*?)```", readme, re.S).group(1)
    example = example.replace("127.0.0.1:8080", stack.url.removeprefix("http://"))
    done = subprocess.run(
        [sys.executable, "-c", example], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    print(f"\nthe README's example printed: {done.stdout.strip()}")
    assert done.returncode == 0, done.stderr
    assert re.search(r"b'\d\.\d{6}:7:7'", done.stdout)


@pytest.mark.parametrize(
    ("header_length", "body", "why"),
    [
        ("nine", b'{"inputs": []}', "Inference-Header-Content-Length"),
        ("4096", b'{"inputs": []}', "at most the body's"),
        (None, b'{"inputs": []}', "non-empty list"),
        (None, b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}', "neither"),
        (
            None,
            b'{"inputs": [{"name": "x", "datatype": "FP8", "shape": [1], "data": [1]}]}',
            "one of",
        ),
    ],
)
def test_bodies_the_client_never_sends_get_400(stack, header_length, body, why):
    headers = {"Inference-Header-Content-Length": header_length} if header_length else {}
    response = requests.post(f"{stack.url}/v2/models/digits/infer", data=body, headers=headers)
    assert response.status_code == 400 and why in response.json()["error"], response.text


def test_binary_sizes_that_do_not_add_up_get_400(stack):
    image = jpeg(7)
    header = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"binary_data_size": len(image) + 4},  # one element
            }
        ]
    }
    head = json.dumps(header).encode()
    element = len(image).to_bytes(4, "little") + image
    cases = ((element[:-2], "runs past the body's end"), (element + b"!!!!", "belong to no input"))
    for binary, why in cases:
        response = requests.post(
            f"{stack.url}/v2/models/digits/infer",
            data=head + binary,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )
        assert response.status_code == 400 and why in response.json()["error"], response.text
