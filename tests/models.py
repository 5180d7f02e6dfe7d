"""Real models built for tests and published to a temporary model repository."""
from app import repository


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
    model = keras.Sequential([
        keras.Input((side, side, 3)),
        layers.Conv2D(filters, 3, padding="same", activation="relu"),
        layers.Conv2D(filters, 3, padding="same", activation="relu"),
        layers.Conv2D(filters, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(4, activation="softmax"),
    ])
    return publish_keras(model, repo, name, version, ["a", "b", "c", "d"])
