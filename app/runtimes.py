"""Compiled forward passes: a batch of uint8 NHWC pixels in, class probabilities out.

The uint8 -> float conversion and the preprocessing run inside the compiled function,
so the worker hands over raw queue bytes and never calls ``model.predict``.
TensorFlow is imported here and in the worker only, never by the web tier.
"""
import numpy as np

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


def configure_threads(threads):
    """Limit TensorFlow's CPU threads; must run before the first model loads."""
    if threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(min(threads, 2))


def load(spec):
    """A warmed-up runner for ``spec``: ``runner(batch) -> float32 [n, classes]``."""
    return TensorFlowRunner(spec)


class TensorFlowRunner:
    def __init__(self, spec):
        import tensorflow as tf
        self.spec = spec
        model = _load_tensorflow_model(spec)
        preprocess = _preprocessing(tf, spec)
        signature = tf.TensorSpec([None, *spec.shape], tf.uint8, name="pixels")

        @tf.function(input_signature=[signature])
        def forward(pixels):
            outputs = model(preprocess(tf.cast(pixels, tf.float32)))
            return tf.nn.softmax(outputs) if spec.output == "logits" else outputs

        self._forward = forward
        self(np.zeros((1, *spec.shape), np.uint8))  # trace now, not on the first request

    def __call__(self, batch):
        return self._forward(batch).numpy()


def _load_tensorflow_model(spec):
    path = spec.model_path
    if path.is_dir():  # a SavedModel: call its serving signature
        import tensorflow as tf
        loaded = tf.saved_model.load(str(path))  # owns the variables: keep it referenced
        signature = loaded.signatures["serving_default"]
        (input_name,) = signature.structured_input_signature[1].keys()

        def call(x, loaded=loaded):
            (output,) = signature(**{input_name: x}).values()
            return output
        return call
    import keras
    model = keras.saving.load_model(str(path), compile=False)
    return lambda x: model(x, training=False)


def _preprocessing(tf, spec):
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
