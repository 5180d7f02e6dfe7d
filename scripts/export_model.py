"""Export a model into Beagle's model repository as models/<name>/<version>/.

    # a keras.applications architecture, with ImageNet weights downloaded (needs internet),
    # random weights (same compute: for benchmarks offline), or a weights file you carried in
    python scripts/export_model.py mobilenet_v2 --weights imagenet
    python scripts/export_model.py mobilenet_v2 --weights none
    python scripts/export_model.py resnet50 --weights /media/usb/resnet50_weights.h5

    # any Keras model file or SavedModel folder of your own
    python scripts/export_model.py ./my_model.keras --name parts --labels labels.txt \\
        --preprocessing unit

ImageNet labels ship with Beagle (scripts/imagenet_labels.txt), so nothing is fetched
for them. The version folder appears whole (written aside, then renamed), so a worker
polling the repository never sees half a model.
"""
import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app import repository  # noqa: E402
from app.settings import PROJECT_ROOT  # noqa: E402

IMAGENET_LABELS = Path(__file__).resolve().parent / "imagenet_labels.txt"

# name -> (keras.applications class, preprocessing its ImageNet weights expect, input size)
ARCHITECTURES = {
    "mobilenet_v2": ("MobileNetV2", "tf", 224),
    "mobilenet_v3_small": ("MobileNetV3Small", "none", 224),  # rescales inside the model
    "mobilenet_v3_large": ("MobileNetV3Large", "none", 224),
    "resnet50": ("ResNet50", "caffe", 224),
    "efficientnet_b0": ("EfficientNetB0", "none", 224),       # rescales inside the model
    "densenet121": ("DenseNet121", "torch", 224),
    "inception_v3": ("InceptionV3", "tf", 299),
    "vgg16": ("VGG16", "caffe", 224),
}


def build_application(arch, weights, size):
    import keras
    class_name, preprocessing, default_size = ARCHITECTURES[arch]
    size = size or default_size
    weights = None if weights == "none" else weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise SystemExit(f"--weights {weights}: no such file")
    model = getattr(keras.applications, class_name)(
        weights=weights, input_shape=(size, size, 3), classifier_activation="softmax")
    return model, preprocessing


def next_version(root, name):
    return max(repository.versions(root, name), default=0) + 1


def export(source, name, version, root, weights="none", size=None, labels=None,
           preprocessing=None):
    """Write the version; returns its folder."""
    root = Path(root)
    final = root / name / str(version)
    if final.exists():
        raise SystemExit(f"{final} already exists; pick another --version")
    staging = root / name / f".{version}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if source in ARCHITECTURES:
        model, default_preprocessing = build_application(source, weights, size)
        model.save(staging / "model.keras")
        file, label_list = "model.keras", IMAGENET_LABELS.read_text().splitlines()
        height, width, channels = model.input_shape[1:]
    else:
        file, (height, width, channels), default_preprocessing = _copy_model(Path(source),
                                                                             staging)
        if not labels:
            raise SystemExit("--labels is required for a model file of your own")
        label_list = Path(labels).read_text().splitlines()
    repository.publish(staging, file, height, width, channels, label_list,
                       preprocessing or default_preprocessing)
    repository.read_spec(staging, name, version)  # refuses what a worker would refuse
    staging.rename(final)
    return final


def _copy_model(source, staging):
    if not source.exists():
        known = ", ".join(ARCHITECTURES)
        raise SystemExit(f"{source}: neither a file nor a known architecture ({known})")
    if source.is_dir():
        import tensorflow as tf
        signature = tf.saved_model.load(str(source)).signatures["serving_default"]
        (spec,) = signature.structured_input_signature[1].values()
        shutil.copytree(source, staging / "saved_model")
        return "saved_model", tuple(spec.shape[1:]), "unit"
    import keras
    model = keras.saving.load_model(str(source), compile=False)
    shutil.copy(source, staging / source.name)
    return source.name, tuple(model.input_shape[1:]), "unit"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("source", help=f"one of {', '.join(ARCHITECTURES)}, or a model path")
    parser.add_argument("--weights", default="imagenet",
                        help="imagenet (download), none (random) or a weights file")
    parser.add_argument("--name", help="model name in the repository (default: the source's)")
    parser.add_argument("--version", type=int, help="default: the next free version")
    parser.add_argument("--size", type=int, help="input height and width (architectures only)")
    parser.add_argument("--labels", help="labels file, one per class index (own models)")
    parser.add_argument("--preprocessing", choices=repository.PREPROCESSING,
                        help="what the model expects (default: the architecture's, else unit)")
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    args = parser.parse_args(argv)
    name = args.name or Path(args.source).stem
    version = args.version or next_version(args.repository, name)
    path = export(args.source, name, version, args.repository, args.weights, args.size,
                  args.labels, args.preprocessing)
    print(f"published {name} version {version} in {path}")


if __name__ == "__main__":
    main()
