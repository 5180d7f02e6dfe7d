"""Post one image to Beagle and print its predictions, one per line: ``1. 7: 0.9921``.

python -m scripts.simple_request [IMAGE] [--url http://127.0.0.1:8080] [--model M]
                                 [--version V] [--top-k K] [--api-key KEY]
"""

import argparse
import sys

from app import config
from app.config import PROJECT_ROOT
from tools.client import connections, default_api_key, json_body, post_image


def main(argv=None):
    settings = config.load()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "image", nargs="?", default=str(PROJECT_ROOT / "stress" / "images" / "digit_7.png")
    )
    parser.add_argument("--url", default=f"http://{settings.host}:{settings.port}")
    parser.add_argument("--model")
    parser.add_argument("--version", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument(
        "--api-key",
        default=default_api_key(settings),
        help="sent as 'Authorization: Bearer KEY' (default: the first of BEAGLE_API_KEYS, if set)",
    )
    args = parser.parse_args(argv)
    params = {
        k: v
        for k, v in (("model", args.model), ("version", args.version), ("top_k", args.top_k))
        if v is not None
    }
    with open(args.image, "rb") as image:
        response, _ = post_image(
            connections(),
            args.url.rstrip("/") + "/predict",
            image.read(),
            timeout=60,
            params=params,
            api_key=args.api_key,
        )
    body = json_body(response)
    if not body.get("success"):
        print(f"error {response.status}: {body.get('error')}", file=sys.stderr)
        return 1
    for rank, prediction in enumerate(body["predictions"], 1):
        print(f"{rank}. {prediction['label']}: {prediction['probability']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
