"""The model repository on disk: ``<root>/<name>/<version>/`` as in TF Serving.

Each version folder holds the model (``.keras``, ``.h5`` or a SavedModel folder),
``labels.txt`` (one label per class index) and ``model.json``::

    {"file": "model.keras", "runtime": "tensorflow",
     "input": {"height": 32, "width": 32, "channels": 1},
     "preprocessing": "unit", "output": "probabilities", "max_batch_size": 8}

preprocessing: none (float pixels 0-255), unit (0-1), tf (-1..1), caffe (BGR, mean
subtracted), torch (0-1, ImageNet mean/std). output: probabilities or logits. runtime:
tensorflow, onnx or litert; an onnx or litert file has the preprocessing (and a softmax
for logits) baked in by scripts/export_model.py, and model.json records what was baked.
max_batch_size (optional) caps this model's batches below the worker's setting: on CPU a
runtime is often fastest at small batches (the benchmark shows which).
A version counts once its model.json exists, so writers publish that file last.
"""

import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("beagle.models")
VERSION = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() takes "²" and "١" too
_ignored: set[Path] = set()  # folders already logged as not a version

PREPROCESSING = ("none", "unit", "tf", "caffe", "torch")
OUTPUTS = ("probabilities", "logits")
RUNTIMES = ("tensorflow", "onnx", "litert")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int
    path: Path
    file: str
    height: int
    width: int
    channels: int
    preprocessing: str
    output: str
    runtime: str
    labels: tuple
    max_batch_size: int = 0  # 0: the worker's max_batch_size setting alone decides

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    @property
    def model_path(self) -> Path:
        return self.path / self.file


def names(root: str | Path) -> list[str]:
    """Models that have at least one published version."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and versions(root, p.name))


def versions(root: str | Path, name: str) -> list[int]:
    """Published versions of ``name``, oldest first; folders not named by a version
    number are ignored (and logged)."""
    folder = Path(root) / name
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if not (path / "model.json").is_file():
            continue
        if VERSION.fullmatch(path.name):
            found.append(int(path.name))
        elif path not in _ignored:
            _ignored.add(path)
            log.warning("model %s: ignoring %s: a version folder's name is a number", name, path)
    return sorted(found)


def load_spec(root: str | Path, name: str, version: int) -> ModelSpec:
    return read_spec(Path(root) / name / str(version), name, version)


def read_spec(path: str | Path, name: str, version: int | str) -> ModelSpec:
    """The spec in folder ``path``, checked; ValueError says what is wrong."""
    path = Path(path)
    meta = json.loads((path / "model.json").read_text())
    labels = tuple((path / "labels.txt").read_text().splitlines())
    size = meta["input"]
    spec = ModelSpec(
        name=name,
        version=int(version),
        path=path,
        file=meta["file"],
        height=int(size["height"]),
        width=int(size["width"]),
        channels=int(size["channels"]),
        preprocessing=meta.get("preprocessing", "unit"),
        output=meta.get("output", "probabilities"),
        runtime=meta.get("runtime", "tensorflow"),
        labels=labels,
        max_batch_size=int(meta.get("max_batch_size", 0)),
    )
    _check(spec)
    return spec


def publish(
    path: str | Path,
    file: str,
    height: int,
    width: int,
    channels: int,
    labels: Iterable[str],
    preprocessing: str = "unit",
    output: str = "probabilities",
    runtime: str = "tensorflow",
    max_batch_size: int = 0,
) -> None:
    """Write labels.txt, then model.json (which makes the version visible) into ``path``."""
    path = Path(path)
    (path / "labels.txt").write_text("\n".join(labels) + "\n")
    meta: dict[str, Any] = {
        "file": file,
        "runtime": runtime,
        "input": {"height": height, "width": width, "channels": channels},
        "preprocessing": preprocessing,
        "output": output,
    }
    if max_batch_size:
        meta["max_batch_size"] = max_batch_size
    staging = path / "model.json.tmp"
    staging.write_text(json.dumps(meta, indent=2) + "\n")
    staging.rename(path / "model.json")


def _check(spec: ModelSpec) -> None:
    problems = []
    if spec.preprocessing not in PREPROCESSING:
        problems.append(f"preprocessing {spec.preprocessing!r} is not one of {PREPROCESSING}")
    if spec.output not in OUTPUTS:
        problems.append(f"output {spec.output!r} is not one of {OUTPUTS}")
    if spec.runtime not in RUNTIMES:
        problems.append(f"runtime {spec.runtime!r} is not one of {RUNTIMES}")
    if spec.channels not in (1, 3):
        problems.append(f"input channels must be 1 or 3, not {spec.channels}")
    if not spec.model_path.exists():
        problems.append(f"{spec.model_path} does not exist")
    if problems:
        raise ValueError(f"model {spec.name} version {spec.version}: " + "; ".join(problems))
