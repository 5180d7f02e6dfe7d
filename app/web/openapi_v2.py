"""The Open Inference Protocol's part of /openapi.json (app/web/v2.py, app/web/triton.py):
its paths and schemas, as tight as the server is, and the helpers every part of the
document is written with (`ref`, `json_content`). Binary tensor data (a JSON header then
raw bytes) has no OpenAPI form; the JSON form is described."""

from typing import Any

from app.web.dispatch import PIXELS, PROBABILITIES
from app.web.v2 import EXTENSIONS, IMAGE

V2_ERRORS = (400, 401, 404, 413, 415, 500, 503, 504)
BASE64 = r"^(data:[^,]*,)?[A-Za-z0-9+/=\s]+$"
BYTE = {"type": "integer", "minimum": 0, "maximum": 255}
TOP_K = {"type": "integer", "minimum": 1, "maximum": 1000}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): json_content(ref("V2Error"), "an error") for s in statuses}


def _no_body(description: str) -> dict[str, str]:
    return {"description": description}


def _model_paths(name: dict, version: dict) -> dict[str, Any]:
    """The paths under /v2/models/{name}, with and without /versions/{version}."""
    found = {}
    for prefix, parameters in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        get = {"tags": ["open-inference-protocol"], "parameters": parameters}
        found[prefix] = {
            "get": {
                **get,
                "summary": "Model metadata: versions, platform, inputs, output",
                "responses": {
                    "200": json_content(ref("V2ModelMetadata"), "the model"),
                    **_errors(401, 404, 503),
                },
            }
        }
        found[prefix + "/ready"] = {
            "get": {
                **get,
                "summary": "200 while a live worker serves the model",
                "responses": {
                    "200": _no_body("ready"),
                    **_errors(400, 401, 404, 503),
                },
            }
        }
        found[prefix + "/infer"] = {
            "post": {
                **get,
                "summary": "Inference: one input, the probabilities or the top-k classes",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("V2InferRequest")}},
                },
                "responses": {
                    "200": json_content(ref("V2InferResponse"), "the output"),
                    **_errors(*V2_ERRORS),
                },
            }
        }
        found[prefix + "/config"] = {
            "get": {
                **get,
                "summary": "The model as a Triton model configuration",
                "responses": {
                    "200": json_content({"type": "object"}, "Triton's model configuration"),
                    **_errors(401, 404, 503),
                },
            }
        }
        found[prefix + "/stats"] = {
            "get": {
                **get,
                "summary": "Triton's inference statistics of the model",
                "responses": {
                    "200": json_content(ref("V2Statistics"), "statistics"),
                    **_errors(401, 404, 503),
                },
            }
        }
    return found


def paths(name: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    tags = {"tags": ["open-inference-protocol"]}
    return {
        "/v2": {
            "get": {
                **tags,
                "summary": "Server metadata",
                "responses": {"200": json_content(ref("V2ServerMetadata"), "the server")},
            }
        },
        "/v2/health/live": {
            "get": {**tags, "summary": "Live", "responses": {"200": _no_body("live")}}
        },
        "/v2/health/ready": {
            "get": {
                **tags,
                "summary": "Ready, as /readyz",
                "responses": {"200": _no_body("ready"), "400": _no_body("not ready")},
            }
        },
        "/v2/models/stats": {
            "get": {
                **tags,
                "summary": "Triton's inference statistics of every model",
                "responses": {
                    "200": json_content(ref("V2Statistics"), "statistics"),
                    **_errors(401, 503),
                },
            }
        },
        **_model_paths(name, version),
    }


def _tensor_meta() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "datatype", "shape"],
        "properties": {
            "name": {"type": "string"},
            "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    }


def _input(name: str, datatype: str, shape: dict, data: dict) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": [name]},
            "datatype": {"type": "string", "enum": [datatype]},
            "shape": shape,
            "data": data,
            "parameters": {"type": "object"},
        },
    }


def _stat() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["count", "ns"],
        "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}},
    }


SCHEMAS: dict[str, Any] = {
    "V2Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "V2ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string", "enum": EXTENSIONS}},
        },
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _tensor_meta()},
            "outputs": {"type": "array", "items": _tensor_meta()},
        },
    },
    "V2InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "oneOf": [
                        _input(
                            IMAGE,
                            "BYTES",
                            {
                                "type": "array",
                                "items": {"type": "integer", "enum": [1]},
                                "minItems": 1,
                                "maxItems": 1,
                            },
                            {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1,
                                "items": {"type": "string", "minLength": 1, "pattern": BASE64},
                                "description": "base64 of an encoded image (JPEG, PNG, ...)",
                            },
                        ),
                        _input(
                            PIXELS,
                            "UINT8",
                            {
                                "type": "array",
                                "minItems": 4,
                                "maxItems": 4,
                                "items": {"type": "integer", "minimum": 1},
                                "description": "[N, height, width, channels]: the model's size",
                            },
                            {
                                "type": "array",
                                "items": BYTE,
                            },
                        ),
                    ]
                },
            },
            "outputs": {
                "type": "array",
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "enum": [PROBABILITIES]},
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "binary_data": {"type": "boolean"},
                                "classification": TOP_K,
                            },
                        },
                    },
                },
            },
        },
    },
    "V2InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    **_tensor_meta(),
                    "properties": {
                        **_tensor_meta()["properties"],
                        "data": {"type": "array"},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    },
    "V2Statistics": {
        "type": "object",
        "required": ["model_stats"],
        "properties": {
            "model_stats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "name",
                        "version",
                        "last_inference",
                        "inference_count",
                        "execution_count",
                        "inference_stats",
                    ],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "last_inference": {"type": "integer"},
                        "inference_count": {"type": "integer"},
                        "execution_count": {"type": "integer"},
                        "inference_stats": {"type": "object", "additionalProperties": _stat()},
                        "batch_stats": {"type": "array"},
                    },
                },
            }
        },
    },
}
