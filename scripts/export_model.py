"""Export a model into Beagle's model repository as models/<name>/<version>/.

    # a keras.applications architecture, with ImageNet weights downloaded (needs internet),
    # random weights (same compute: for benchmarks offline), or a weights file carried in
    python -m scripts.export_model mobilenet_v2 --weights imagenet --runtime litert
    python -m scripts.export_model mobilenet_v2 --weights none --runtime onnx
    python -m scripts.export_model resnet50 --weights /media/usb/resnet50_weights.h5

    # any Keras model file or SavedModel folder of your own
    python -m scripts.export_model ./my_model.keras --name parts --labels labels.txt \\
        --preprocessing unit --runtime onnx

--runtime tensorflow keeps the Keras model; onnx and litert convert the compiled forward
pass (uint8 pixels in, preprocessing inside, probabilities out). Every candidate is loaded
the way a worker loads it and compared with TensorFlow on sample inputs; the export
refuses to publish when they disagree. Random weights get their BatchNorm statistics
calibrated on random images, so their outputs vary like a trained model's and that
comparison means something. ImageNet labels ship with Beagle (tools/imagenet_labels.txt).
The version folder appears whole (written aside, then renamed), so a worker polling the
repository never sees half a model.
"""

import argparse
from pathlib import Path

from app.config import PROJECT_ROOT
from app.worker import repository
from tools.exporting import ARCHITECTURES, export, next_version


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("source", help=f"one of {', '.join(ARCHITECTURES)}, or a model path")
    parser.add_argument("--runtime", choices=repository.RUNTIMES, default="tensorflow")
    parser.add_argument(
        "--weights", default="imagenet", help="imagenet (download), none (random) or a weights file"
    )
    parser.add_argument("--name", help="model name in the repository (default: the source's)")
    parser.add_argument("--version", type=int, help="default: the next free version")
    parser.add_argument("--size", type=int, help="input height and width (architectures only)")
    parser.add_argument("--labels", help="labels file, one per class index (own models)")
    parser.add_argument(
        "--preprocessing",
        choices=repository.PREPROCESSING,
        help="what the model expects (default: the architecture's, else unit)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=0,
        help="cap this model's batches (its fastest batch on CPU, say)",
    )
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    args = parser.parse_args(argv)
    name = args.name or Path(args.source).stem
    version = args.version or next_version(args.repository, name)
    path = export(
        args.source,
        name,
        version,
        args.repository,
        args.runtime,
        args.weights,
        args.size,
        args.labels,
        args.preprocessing,
        args.max_batch_size,
    )
    print(f"published {name} version {version} ({args.runtime}) in {path}")


if __name__ == "__main__":
    main()
