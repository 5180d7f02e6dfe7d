"""The benchmark's peer: a model from Beagle's repository served by LitServe.

Run by LitServe's own venv (stress/peer.py), from the checkout's root. It decodes with
Beagle's image intake, runs Beagle's compiled forward pass for the same model file and
formats the same top-5 answer, so that the two stacks differ only in how they serve:
POST /predict with the image as multipart field ``image``.

    python -m stress.litserve_app REPOSITORY MODEL VERSION --port 8000 --max-batch-size 16
"""

import argparse

import litserve as ls
import numpy as np

from app.imaging import DecodeBudget, to_pixels
from app.worker import repository, runtimes
from app.worker.passes import prediction

MAX_PIXELS = 25_000_000


class ImageAPI(ls.LitAPI):
    def __init__(self, spec, threads, **batching):
        super().__init__(**batching)
        self.model_spec, self.threads = spec, threads  # LitAPI has a .spec of its own

    def setup(self, device):
        self.runner = runtimes.load(self.model_spec, self.threads)
        self.budget = DecodeBudget(1 << 31)

    def decode_request(self, request):
        data = request["image"].file.read()
        pixels = to_pixels(data, self.model_spec.shape, MAX_PIXELS, self.budget)
        return np.frombuffer(pixels, np.uint8).reshape(self.model_spec.shape)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, batch):
        return self.runner(batch)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probabilities):
        return {"predictions": prediction(self.model_spec, probabilities, 5)["predictions"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository")
    parser.add_argument("model")
    parser.add_argument("version", type=int)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--batch-timeout", type=float, default=0.001)
    parser.add_argument("--threads", type=int, default=0, help="the runtime's (0: a core each)")
    parser.add_argument("--workers", type=int, default=1, help="inference processes")
    args = parser.parse_args(argv)
    spec = repository.load_spec(args.repository, args.model, args.version)
    api = ImageAPI(
        spec,
        args.threads,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/predict",
    )
    ls.LitServer(api, accelerator="cpu", workers_per_device=args.workers).run(
        host="127.0.0.1", port=args.port, generate_client_file=False
    )


if __name__ == "__main__":
    main()
