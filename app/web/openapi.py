"""GET /openapi.json: the OpenAPI 3 description of every endpoint (tests/test_observability.py
runs schemathesis against it)."""

from typing import Any

from flask import Blueprint, Response, jsonify

from app.web.api import MAX_VERSION, MODEL_NAME
from app.web.openapi_v2 import BASE64, SCHEMAS, TOP_K, json_content, paths, ref

bp = Blueprint("openapi", __name__)


def _errors(*statuses: int, schema: str = "Error") -> dict[str, Any]:
    why = {
        400: "bad input or parameters",
        401: "API key missing or wrong",
        403: "not from an admin network",
        404: "no such model, version or path",
        405: "method not allowed",
        413: "too many bytes or pixels",
        415: "not an image type or format",
        500: "the model failed on this input",
        503: "refused for now (queue full or slow, no live worker, Redis down); see Retry-After",
        504: "no answer by the deadline",
    }
    return {str(s): json_content(ref(schema), why[s]) for s in statuses}


PREDICT_ERRORS = (400, 401, 404, 413, 415, 500, 503, 504)

VERSION = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
MODEL = {"type": "string", "pattern": f"^{MODEL_NAME.pattern}$"}
NAME = {"name": "name", "in": "path", "required": True, "schema": MODEL}
OPTIONS = {
    "model": {
        "type": "string",
        "pattern": f"^({MODEL_NAME.pattern})?$",
        "description": "model name (empty or absent: default_model)",
    },
    "version": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_VERSION,
        "description": "default: the newest",
    },
    "top_k": TOP_K,
}


def _tf_predict(parameters: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "post": {
            "summary": "TensorFlow Serving predict",
            "tags": ["tensorflow-serving"],
            "parameters": parameters,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("TFPredictRequest")}},
            },
            "responses": {
                "200": json_content(ref("TFPredictResponse"), "probabilities per instance"),
                **_errors(*PREDICT_ERRORS, schema="TFError"),
            },
        }
    }


def _tf_get(parameters: list[dict[str, Any]], schema: str, summary: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "tags": ["tensorflow-serving"],
            "parameters": parameters,
            "responses": {
                "200": json_content(ref(schema), summary),
                **_errors(401, 404, 503, schema="TFError"),
            },
        }
    }


DOCUMENT = {
    "openapi": "3.0.3",
    "info": {
        "title": "Beagle",
        "version": "1.0",
        "description": "An image model behind HTTP: Beagle's own API, the Open Inference "
        "Protocol (KServe v2) with Triton's extensions, and TensorFlow Serving's REST API.",
    },
    "paths": {
        "/predict": {
            "post": {
                "summary": "Classify one image",
                "tags": ["beagle"],
                "parameters": [
                    {"name": k, "in": "query", "required": False, "schema": v}
                    for k, v in OPTIONS.items()
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "required": ["image"],
                                "properties": {
                                    "image": {"type": "string", "format": "binary"},
                                    **OPTIONS,
                                },
                            }
                        },
                        "image/*": {"schema": {"type": "string", "format": "binary"}},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        },
                        "application/json": {"schema": ref("PredictJSON")},
                    },
                },
                "responses": {
                    "200": json_content(ref("Prediction"), "the top-k labels"),
                    **_errors(*PREDICT_ERRORS),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "tags": ["operations"],
                "responses": {"200": json_content(ref("Health"), "alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis answers and some model has a live worker (all are listed)",
                "tags": ["operations"],
                "responses": {
                    "200": json_content(ref("Readiness"), "ready"),
                    "503": json_content({"oneOf": [ref("Readiness"), ref("Error")]}, "not ready"),
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Models, workers, queues, request totals",
                "tags": ["operations"],
                "responses": {"200": json_content(ref("Status"), "live status"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(403, 503),
                },
            }
        },
        "/": {
            "get": {
                "summary": "A page to try a model and watch the status",
                "tags": ["ui"],
                "responses": {
                    "200": {
                        "description": "HTML",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["operations"],
                "responses": {"200": json_content({"type": "object"}, "OpenAPI 3")},
            }
        },
        "/v1/models/{name}:predict": _tf_predict([NAME]),
        "/v1/models/{name}/versions/{version}:predict": _tf_predict([NAME, VERSION]),
        "/v1/models/{name}": _tf_get([NAME], "ModelStatus", "Model version status"),
        "/v1/models/{name}/versions/{version}": _tf_get(
            [NAME, VERSION], "ModelStatus", "Model version status"
        ),
        "/v1/models/{name}/metadata": _tf_get([NAME], "Metadata", "Model metadata"),
        "/v1/models/{name}/versions/{version}/metadata": _tf_get(
            [NAME, VERSION], "Metadata", "Model metadata"
        ),
        **paths(NAME, VERSION),
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["success", "error"],
                "properties": {
                    "success": {"type": "boolean", "enum": [False]},
                    "error": {"type": "string"},
                    "request_id": {"type": "string", "nullable": True},
                },
            },
            "PredictJSON": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {
                        "type": "string",
                        "minLength": 1,
                        "pattern": BASE64,
                        "description": "base64 of an encoded image",
                    },
                    **OPTIONS,
                },
            },
            "Prediction": {
                "type": "object",
                "required": ["success", "predictions", "model", "request_id"],
                "properties": {
                    "success": {"type": "boolean", "enum": [True]},
                    "predictions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["label", "probability"],
                            "properties": {
                                "label": {"type": "string"},
                                "probability": {"type": "number"},
                                "index": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                    "model": {
                        "type": "object",
                        "required": ["name", "version"],
                        "properties": {"name": {"type": "string"}, "version": {"type": "integer"}},
                    },
                    "request_id": {"type": "string"},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "properties": {"status": {"type": "string"}},
            },
            "Readiness": {
                "type": "object",
                "required": ["ready", "redis", "models"],
                "properties": {
                    "ready": {"type": "boolean"},
                    "redis": {"type": "string"},
                    "models": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "properties": {
                                "versions": {"type": "array", "items": {"type": "integer"}},
                                "live_workers": {"type": "integer"},
                            },
                        },
                    },
                },
            },
            "Status": {
                "type": "object",
                "required": ["models", "workers", "time", "answered"],
                "properties": {
                    "models": {"type": "array", "items": {"type": "object"}},
                    "workers": {"type": "array", "items": {"type": "object"}},
                    "time": {"type": "number"},
                    "answered": {"type": "object", "additionalProperties": {"type": "integer"}},
                },
            },
            "TFPredictRequest": {
                "type": "object",
                "properties": {
                    "signature_name": {"type": "string", "enum": ["serving_default"]},
                    "instances": {"type": "array", "minItems": 1, "items": ref("TFInstance")},
                    "inputs": {
                        "oneOf": [
                            {"type": "array", "minItems": 1, "items": ref("TFInstance")},
                            {
                                "type": "object",
                                "required": ["pixels"],
                                "additionalProperties": False,
                                "properties": {
                                    "pixels": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": ref("TFInstance"),
                                    }
                                },
                            },
                        ]
                    },
                },
                "oneOf": [
                    {"required": ["instances"], "not": {"required": ["inputs"]}},
                    {"required": ["inputs"], "not": {"required": ["instances"]}},
                ],
            },
            "TFInstance": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["b64"],
                        "additionalProperties": False,
                        "properties": {
                            "b64": {"type": "string", "minLength": 1, "pattern": BASE64}
                        },
                    },
                    {
                        "type": "array",
                        "description": "pixels, height x width (x 1 or 3 channels), 0-255",
                        "minItems": 1,
                        "items": {"type": "array", "minItems": 1},
                    },
                ]
            },
            "TFPredictResponse": {
                "type": "object",
                "properties": {
                    "predictions": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                    "outputs": {
                        "type": "array",
                        "items": {"type": "array", "items": {"type": "number"}},
                    },
                },
            },
            "TFError": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            },
            "ModelStatus": {
                "type": "object",
                "required": ["model_version_status"],
                "properties": {
                    "model_version_status": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["version", "state", "status"],
                            "properties": {
                                "version": {"type": "string"},
                                "state": {"type": "string"},
                                "status": {"type": "object"},
                            },
                        },
                    }
                },
            },
            **SCHEMAS,
            "Metadata": {
                "type": "object",
                "required": ["model_spec", "metadata"],
                "properties": {"model_spec": {"type": "object"}, "metadata": {"type": "object"}},
            },
        }
    },
}


@bp.get("/openapi.json")
def document() -> Response:
    return jsonify(DOCUMENT)
