"""Beagle's served code, in three rooms.

    app/web/     the web tier: the Flask app mod_wsgi serves (Pillow, NumPy, redis-py;
                 never TensorFlow)
    app/worker/  the model-server worker: ``python -m app.worker`` (the model runtimes)
    app/         what both share: settings (config), the Redis queue's format (queue,
                 keys), the registry of live workers, metrics, image intake (imaging),
                 stop signals

Nothing in app/ imports from app/web/ or app/worker/, and neither imports the other.
"""

__version__ = "0.4.0"
