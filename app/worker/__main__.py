"""``python -m app.worker``: run one worker until SIGTERM."""

from app.worker.loop import main

main()
