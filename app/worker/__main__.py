"""``python -m app.worker``: run one worker until SIGTERM."""

import logging
import os

from app import config
from app.worker.loop import Worker


def main() -> None:
    settings = config.load()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    worker = Worker(settings)
    worker.work()
    if worker.abandoned:  # exit now, not once the load's thread ends (it may never)
        logging.shutdown()
        os._exit(0)


main()
