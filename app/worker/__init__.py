"""The model-server worker (``python -m app.worker``): its loop (loop), what it takes from
the queue (intake), its heartbeat (heartbeat), a batch's forward passes (passes), the model
versions it holds (loaded_models), the model repository on disk (repository), the runtimes
that run a model (runtimes) and what becomes of each entry it takes (outcomes)."""
