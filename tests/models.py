"""Real models built for tests and published to a temporary model repository."""

from app.worker import repository


def publish_keras(model, repo, name, version, labels, preprocessing="unit"):
    path = repo / name / str(version)
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / "model.keras")
    height, width, channels = model.input_shape[1:]
    repository.publish(path, "model.keras", height, width, channels, labels, preprocessing)
    return path


def slow_model(repo, name="slow", version=1, filters=192, side=128):
    """A plain CNN heavy enough that a batch of a few images takes about a second here."""
    import keras
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input((side, side, 3)),
            layers.Conv2D(filters, 3, padding="same", activation="relu"),
            layers.Conv2D(filters, 3, padding="same", activation="relu"),
            layers.Conv2D(filters, 3, padding="same", activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(4, activation="softmax"),
        ]
    )
    return publish_keras(model, repo, name, version, ["a", "b", "c", "d"])


POISON_MARKER = 13


def poison_model(repo, name="poison", version=1):
    """A SavedModel whose forward pass raises when an image's top-left pixel is 13."""
    import tensorflow as tf

    class Poison(tf.Module):
        def __init__(self):
            self.weights = tf.Variable(tf.random.stateless_normal([32 * 32, 10], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 1], tf.float32)])
        def serve(self, pixels):
            clean = tf.debugging.Assert(
                tf.reduce_all(pixels[:, 0, 0, 0] != POISON_MARKER), ["poison marker"]
            )
            with tf.control_dependencies([clean]):
                flat = tf.reshape(pixels, [-1, 32 * 32]) / 255.0
                return {"probabilities": tf.nn.softmax(flat @ self.weights)}

    module = Poison()
    path = repo / name / str(version)
    tf.saved_model.save(
        module, str(path / "saved_model"), signatures={"serving_default": module.serve}
    )
    repository.publish(path, "saved_model", 32, 32, 1, [str(d) for d in range(10)], "none")
    return path


def marker_png(poisoned):
    """A 32x32 grey PNG, with the poison marker in its corner or not."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.full((32, 32), 200, np.uint8)
    pixels[0, 0] = POISON_MARKER if poisoned else 200
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()
