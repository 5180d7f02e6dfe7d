"""Train Beagle's bundled model offline and publish it to the model repository.

scikit-learn ships the data (1,797 8x8 handwritten digits), so nothing is downloaded.
Digits are drawn dark on white as a person would, enlarged to 64x64 and brought to the
model's 32x32 the way the web tier does it (Pillow bilinear), then a small CNN is trained
with shifts and inverted colours. It refuses to publish below 95% test accuracy, and
writes one correctly classified sample PNG per digit to stress/images/.

    python -m scripts.train_digits [--version 1] [--epochs 40]
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from app.config import PROJECT_ROOT
from app.worker import repository

SIDE = 32  # model input
SAMPLE_SIDE = 64  # committed sample images
MIN_ACCURACY = 0.95


def digit_image(values, side):
    """An 8x8 digit (0..16, 16 = ink) as a dark-on-white grayscale image ``side`` px wide."""
    ink = 255 - np.round(values * (255 / 16)).astype(np.uint8)
    sample = Image.fromarray(ink, "L").resize((SAMPLE_SIDE, SAMPLE_SIDE), Image.Resampling.BILINEAR)
    if side == SAMPLE_SIDE:
        return sample
    return sample.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0)


def augment(images, rng, copies):
    """Shifted by up to 3 px and, half the time, inverted (white ink on black)."""
    out = []
    for _ in range(copies):
        shifted = np.stack(
            [np.roll(img, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)) for img in images]
        )
        invert = rng.random(len(images)) < 0.5
        shifted[invert] = 255 - shifted[invert]
        out.append(shifted)
    return np.concatenate(out)


def load_split(seed=0):
    """The digits, as model-sized images, and the train/test split (80/20, stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.stack([np.asarray(digit_image(v, SIDE)) for v in digits.images])
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.2, stratify=digits.target, random_state=seed
    )
    return digits, images, train_idx, test_idx


def build_model():
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input((SIDE, SIDE, 1)),
            layers.Conv2D(16, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dropout(0.2),
            layers.Dense(10, activation="softmax"),
        ]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repository", default=str(PROJECT_ROOT / "models"))
    parser.add_argument("--samples", default=str(PROJECT_ROOT / "stress" / "images"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import keras

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    digits, images, train_idx, test_idx = load_split(args.seed)
    copies = 8
    x_train = augment(images[train_idx], rng, copies)[..., None] / 255.0
    y_train = np.tile(digits.target[train_idx], copies)

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=128, verbose=2, validation_split=0.1)

    x_test = images[test_idx][..., None] / 255.0
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    accuracy = float((predicted == digits.target[test_idx]).mean())
    inverted = model.predict(1.0 - x_test, verbose=0).argmax(axis=1)
    inverted_accuracy = float((inverted == digits.target[test_idx]).mean())
    print(
        f"test accuracy: {accuracy:.4f} on {len(test_idx)} held-out digits "
        f"({inverted_accuracy:.4f} with colours inverted)"
    )
    if accuracy < MIN_ACCURACY:
        raise SystemExit(f"not publishing: accuracy {accuracy:.4f} < {MIN_ACCURACY}")

    path = Path(args.repository) / "digits" / str(args.version)
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model.keras")
    repository.publish(
        path, "model.keras", SIDE, SIDE, 1, [str(d) for d in range(10)], preprocessing="unit"
    )
    print(f"published {path}")

    samples = Path(args.samples)
    samples.mkdir(parents=True, exist_ok=True)
    for digit in range(10):
        index = next(
            i
            for i, p in zip(test_idx, predicted, strict=True)
            if digits.target[i] == digit and p == digit
        )
        digit_image(digits.images[index], SAMPLE_SIDE).save(samples / f"digit_{digit}.png")
    print(f"wrote digit_0.png .. digit_9.png to {samples}")


if __name__ == "__main__":
    main()
