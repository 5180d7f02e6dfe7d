"""Compiled forward passes: a batch of uint8 NHWC pixels in, class probabilities out.

tensorflow  a ``tf.function`` with a fixed uint8 input signature around the Keras model
            or SavedModel; the float conversion and preprocessing run inside it.
onnx        an ONNX graph exported by scripts/export_model.py (tf2onnx) with the same
            conversion and preprocessing baked in; ONNX Runtime, on CUDA when present.
litert      a LiteRT (TFLite) flatbuffer exported the same way; the XNNPACK CPU delegate.

The worker hands over raw queue bytes and never calls ``model.predict``. TensorFlow,
ONNX Runtime and LiteRT are imported here and in the worker only, never by the web tier.
"""

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from app.config import per_core
from app.worker.repository import ModelSpec

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
FILES = {"tensorflow": "model.keras", "onnx": "model.onnx", "litert": "model.tflite"}


def load(spec: ModelSpec, threads: int = 0, gpu_memory_mb: int = 0) -> Any:
    """A warmed-up runner for ``spec``: ``runner(batch) -> float32 [n, classes]``.
    ``gpu_memory_mb``: the most GPU memory its runtime may take (0: what it needs, taken
    as it is needed; TensorFlow and ONNX Runtime otherwise take most of the device)."""
    runner = RUNNERS[spec.runtime](spec, per_core(threads), gpu_memory_mb)
    runner(np.zeros((1, *spec.shape), np.uint8))  # build and trace now, not on a request
    return runner


class TensorFlowRunner:
    _threads: int | None = None  # TensorFlow takes its thread counts once, before its first op

    def __init__(self, spec: ModelSpec, threads: int, gpu_memory_mb: int = 0) -> None:
        import tensorflow as tf

        if TensorFlowRunner._threads is None:
            TensorFlowRunner._threads = threads
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))
                for gpu in tf.config.list_physical_devices("GPU"):
                    if gpu_memory_mb:
                        tf.config.set_logical_device_configuration(
                            gpu, [tf.config.LogicalDeviceConfiguration(gpu_memory_mb)]
                        )
                    else:
                        tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # this process already ran TensorFlow ops: pools are fixed
                pass
        self.spec = spec
        self._forward = tensorflow_forward(tf, spec, load_tensorflow_model(spec))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch).numpy()


def onnx_providers(
    available: list[str], gpu_memory_mb: int = 0
) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's providers: CUDA first when present, its memory arena grown only by
    what is asked (not to the next power of two), within ``gpu_memory_mb`` if set."""
    cuda = {"arena_extend_strategy": "kSameAsRequested"}
    if gpu_memory_mb:
        cuda["gpu_mem_limit"] = str(gpu_memory_mb * 1024 * 1024)
    return [("CUDAExecutionProvider", cuda)] * ("CUDAExecutionProvider" in available) + [
        "CPUExecutionProvider"
    ]


class OnnxRunner:
    def __init__(self, spec: ModelSpec, threads: int, gpu_memory_mb: int = 0) -> None:
        import onnxruntime as ort

        self.spec = spec
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = onnx_providers(ort.get_available_providers(), gpu_memory_mb)
        self._session = ort.InferenceSession(str(spec.model_path), options, providers=providers)
        self._input = self._session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: batch})[0]


class LiteRTRunner:
    """Not thread-safe; the worker runs every forward pass on one thread."""

    def __init__(
        self, spec: ModelSpec, threads: int, gpu_memory_mb: int = 0
    ) -> None:  # CPU only: XNNPACK
        from ai_edge_litert.interpreter import Interpreter

        self.spec = spec
        self._interpreter = Interpreter(model_path=str(spec.model_path), num_threads=threads)
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._batch_size: int | None = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch_size:  # re-plan only when the batch size changes
            self._interpreter.resize_tensor_input(self._input, batch.shape)
            self._interpreter.allocate_tensors()
            self._batch_size = batch.shape[0]
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


RUNNERS: dict[str, Callable[[ModelSpec, int, int], Any]] = {
    "tensorflow": TensorFlowRunner,
    "onnx": OnnxRunner,
    "litert": LiteRTRunner,
}


def tensorflow_forward(tf: ModuleType, spec: ModelSpec, model: Callable[[Any], Any]) -> Any:
    """The compiled uint8 -> probabilities function: served by the tensorflow runtime,
    and the source the exporter converts to ONNX."""
    preprocess = preprocessing(tf, spec)
    signature = tf.TensorSpec([None, *spec.shape], tf.uint8, name="pixels")

    @tf.function(input_signature=[signature])
    def forward(pixels: Any) -> Any:
        outputs = model(preprocess(tf.cast(pixels, tf.float32)))
        return tf.nn.softmax(outputs) if spec.output == "logits" else outputs

    return forward


def load_tensorflow_model(spec: ModelSpec) -> Callable[[Any], Any]:
    """A callable float batch -> outputs, from a Keras file or a SavedModel folder."""
    path = spec.model_path
    if path.is_dir():  # a SavedModel: call its serving signature
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))  # owns the variables: keep it referenced
        signature = loaded.signatures["serving_default"]
        (input_name,) = signature.structured_input_signature[1].keys()

        def call(x: Any, loaded: Any = loaded) -> Any:
            (output,) = signature(**{input_name: x}).values()
            return output

        return call
    import keras

    model = keras.saving.load_model(str(path), compile=False)
    return lambda x: model(x, training=False)


def preprocessing(tf: ModuleType, spec: ModelSpec) -> Callable[[Any], Any]:
    """The model's preprocessing as TensorFlow ops on float pixels 0-255."""
    mode = spec.preprocessing
    if mode in ("caffe", "torch") and spec.channels != 3:
        raise ValueError(f"model {spec.name}: {mode} preprocessing needs 3 channels")
    if mode == "none":
        return lambda x: x
    if mode == "unit":
        return lambda x: x / 255.0
    if mode == "tf":
        return lambda x: x / 127.5 - 1.0
    if mode == "caffe":
        return lambda x: x[..., ::-1] - tf.constant(CAFFE_MEAN_BGR)
    return lambda x: (x / 255.0 - tf.constant(TORCH_MEAN)) / tf.constant(TORCH_STD)
