"""Exporting a model into Beagle's model repository as models/<name>/<version>/: the
library behind ``python -m scripts.export_model`` (its command line) and the benchmark.

`export` takes a keras.applications architecture (ImageNet weights, random weights or a
weights file) or a model file of one's own; --runtime tensorflow keeps the Keras model,
onnx and litert convert the compiled forward pass (uint8 pixels in, preprocessing inside,
probabilities out). Every candidate is loaded the way a worker loads it and compared with
TensorFlow on sample inputs (`verify`); the export refuses to publish when they disagree.
Random weights get their BatchNorm statistics calibrated on random images, so their
outputs vary like a trained model's and that comparison means something. ImageNet labels
ship with Beagle (tools/imagenet_labels.txt). The version folder appears whole (written
aside, then renamed), so a worker polling the repository never sees half a model.
"""

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from app.worker import repository, runtimes

IMAGENET_LABELS = Path(__file__).resolve().parent / "imagenet_labels.txt"
TOLERANCE = 1e-3  # largest |difference| in any probability accepted from a conversion
SAMPLES = 24

# name -> (keras.applications class, preprocessing its ImageNet weights expect, input size)
ARCHITECTURES = {
    "mobilenet_v2": ("MobileNetV2", "tf", 224),
    "mobilenet_v3_small": ("MobileNetV3Small", "none", 224),  # rescales inside the model
    "mobilenet_v3_large": ("MobileNetV3Large", "none", 224),
    "resnet50": ("ResNet50", "caffe", 224),
    "efficientnet_b0": ("EfficientNetB0", "none", 224),  # rescales inside the model
    "densenet121": ("DenseNet121", "torch", 224),
    "inception_v3": ("InceptionV3", "tf", 299),
    "vgg16": ("VGG16", "caffe", 224),
}


def build_application(arch, weights, size):
    import keras

    class_name, preprocessing, default_size = ARCHITECTURES[arch]
    size = size or default_size
    if weights not in ("none", "imagenet") and not Path(weights).is_file():
        raise SystemExit(f"--weights {weights}: no such file")
    model = getattr(keras.applications, class_name)(
        weights=None if weights == "none" else weights,
        input_shape=(size, size, 3),
        classifier_activation="softmax",
    )
    return model, preprocessing


def calibrate_batchnorm(model, forward_float, shape):
    """Set every BatchNorm's moving statistics to those of random images, in one pass."""
    import keras

    layers = [
        layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(forward_float(sample_inputs(shape, 64)), training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    return len(layers)


def _all_layers(model):
    for layer in getattr(model, "layers", ()):
        yield layer
        yield from _all_layers(layer)


def sample_inputs(shape, count=SAMPLES):
    """Noise and smooth random images, as uint8 [count, h, w, c]."""
    rng = np.random.default_rng(0)
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    smooth = [
        np.asarray(
            Image.fromarray(rng.integers(0, 256, (4, 4, 3), np.uint8))
            .convert(mode)
            .resize((width, height), Image.Resampling.BICUBIC)
        ).reshape(shape)
        for _ in range(count - count // 2)
    ]
    noise = rng.integers(0, 256, (count // 2, *shape), np.uint8)
    return np.concatenate([np.stack(smooth), noise])


def verify(reference, candidate, shape):
    """Compare the candidate runner with TensorFlow; SystemExit when they disagree."""
    inputs = sample_inputs(shape)
    expected, got = reference(inputs).numpy(), candidate(inputs)
    difference = float(np.abs(expected - got).max())
    ranked = np.sort(expected, axis=1)
    clear = ranked[:, -1] - ranked[:, -2] > TOLERANCE  # a near-tie may flip either way
    flipped = (expected.argmax(1) != got.argmax(1)) & clear
    agreement = float((expected.argmax(1) == got.argmax(1)).mean())
    print(
        f"verified on {len(inputs)} sample inputs against TensorFlow: max |difference| "
        f"{difference:.2e}, top-1 agreement {agreement:.1%}"
    )
    if float(np.ptp(expected.argmax(1))) == 0 and float(np.ptp(expected)) < 1e-6:
        print(
            "warning: TensorFlow's outputs do not vary across the samples; "
            "this comparison proves little"
        )
    if difference > TOLERANCE or flipped.any():
        raise SystemExit(
            f"refusing to publish: outputs differ from TensorFlow's by up to "
            f"{difference:.2e} (tolerance {TOLERANCE:g}), top-1 differs on "
            f"{int(flipped.sum())} clear-cut inputs"
        )


def next_version(root, name):
    return max(repository.versions(root, name), default=0) + 1


def export(
    source,
    name,
    version,
    root,
    runtime="tensorflow",
    weights="none",
    size=None,
    labels=None,
    preprocessing=None,
    max_batch_size=0,
):
    """Write, verify and publish the version; returns its folder."""
    import tensorflow as tf

    root = Path(root)
    final = root / name / str(version)
    if final.exists():
        raise SystemExit(f"{final} already exists; pick another --version")
    staging = root / name / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        keras_model, tf_file, shape, default_preprocessing, label_list = _stage_source(
            source, staging, weights, size, labels
        )
        spec = repository.ModelSpec(
            name=name,
            version=version,
            path=staging,
            file=tf_file,
            height=shape[0],
            width=shape[1],
            channels=shape[2],
            preprocessing=preprocessing or default_preprocessing,
            output="probabilities",
            runtime="tensorflow",
            labels=tuple(label_list),
        )
        model = keras_model if keras_model is not None else runtimes.load_tensorflow_model(spec)
        if keras_model is not None and weights == "none":
            preprocess = runtimes.preprocessing(tf, spec)
            count = calibrate_batchnorm(
                keras_model, lambda x: preprocess(tf.cast(x, tf.float32)), shape
            )
            print(f"calibrated {count} BatchNorm layers on random images")
        call = model if keras_model is None else (lambda x: keras_model(x, training=False))
        reference = runtimes.tensorflow_forward(tf, spec, call)
        if keras_model is not None and runtime == "tensorflow":
            keras_model.save(staging / tf_file)
        file = _convert(runtime, reference, keras_model, spec, staging)
        repository.publish(
            staging,
            file,
            *shape,
            label_list,
            spec.preprocessing,
            runtime=runtime,
            max_batch_size=max_batch_size,
        )
        candidate = repository.read_spec(staging, name, version)  # as a worker would
        verify(reference, runtimes.load(candidate), shape)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.rename(final)
    return final


def _stage_source(source, staging, weights, size, labels):
    """(keras model or None, tensorflow file name, shape, preprocessing, labels)."""
    if source in ARCHITECTURES:
        model, preprocessing = build_application(source, weights, size)
        return (
            model,
            "model.keras",
            tuple(model.input_shape[1:]),
            preprocessing,
            IMAGENET_LABELS.read_text().splitlines(),
        )
    source = Path(source)
    if not source.exists():
        raise SystemExit(
            f"{source}: neither a file nor a known architecture ({', '.join(ARCHITECTURES)})"
        )
    if not labels:
        raise SystemExit("--labels is required for a model file of your own")
    label_list = Path(labels).read_text().splitlines()
    if source.is_dir():
        import tensorflow as tf

        signature = tf.saved_model.load(str(source)).signatures["serving_default"]
        (input_spec,) = signature.structured_input_signature[1].values()
        shutil.copytree(source, staging / "saved_model")
        return None, "saved_model", tuple(input_spec.shape[1:]), "unit", label_list
    import keras

    model = keras.saving.load_model(str(source), compile=False)
    shutil.copy(source, staging / source.name)
    return model, source.name, tuple(model.input_shape[1:]), "unit", label_list


def _convert(runtime, reference, keras_model, spec, staging):
    """Write the runtime's file into ``staging``; its name."""
    if runtime == "tensorflow":
        return spec.file
    import tensorflow as tf

    file = runtimes.FILES[runtime]
    if runtime == "onnx":
        import tf2onnx

        tf2onnx.convert.from_function(
            reference,
            input_signature=[tf.TensorSpec([None, *spec.shape], tf.uint8, name="pixels")],
            opset=17,
            output_path=str(staging / file),
        )
    else:
        if keras_model is None:
            raise SystemExit("--runtime litert needs a Keras model, not a SavedModel folder")
        (staging / file).write_bytes(_litert_flatbuffer(tf, keras_model, spec))
    _remove_tensorflow_copy(staging, spec.file)
    return file


def _litert_flatbuffer(tf, keras_model, spec):
    # from_keras_model, not from_concrete_functions: the latter drops Keras 3 weights.
    import keras

    preprocess = runtimes.preprocessing(tf, spec)
    pixels = keras.Input(spec.shape, dtype="uint8")
    floats = keras.layers.Lambda(lambda x: preprocess(tf.cast(x, tf.float32)))(pixels)
    wrapped = keras.Model(pixels, keras_model(floats, training=False))
    return tf.lite.TFLiteConverter.from_keras_model(wrapped).convert()


def _remove_tensorflow_copy(staging, tf_file):
    path = staging / tf_file
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
