"""The naive baseline of `make bench-compare`: one request, one synchronous forward pass.

What `predictor` replaces, in its simplest honest form: an aiohttp server
whose handler decodes the JPEG, runs the network on that one image and
answers, all on the event loop, with no batching and no thread pool. It uses
`predictor`'s preprocessing (reduced JPEG decoding included) and runs the
checkpoint as MXNet's documentation shows (`bench.plain_model`), or with
``--model-code predictor`` through predictor's own model code.

Run: ``python -m bench.naive_server --model PREFIX --edge 300`` (loopback,
port 0 = any free port; the port is printed on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from aiohttp import web

from bench.plain_model import MODEL_CODES, BaselineModel, load_baseline_model
from predictor.detections import to_detections
from predictor.errors import ImageError
from predictor.runtime.imaging import prepare

DETECTOR_KEY = web.AppKey("detector", BaselineModel)
MAX_PIXELS = 50_000_000
THRESHOLD = 0.5


async def predict(request: web.Request) -> web.Response:
    """Decode, forward, answer: one image at a time, on the event loop."""
    detector = request.app[DETECTOR_KEY]
    if request.content_type.lower() != "image/jpeg":
        return web.json_response({"error": "Invalid content"}, status=400)
    body = await request.read()
    try:
        image = prepare(body, detector.preprocessing, MAX_PIXELS)
    except ImageError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    (raw,) = detector.forward([image.tensor])
    detections = to_detections(raw, image.placement, detector.classes, THRESHOLD)
    return web.json_response({"prediction": [d.to_json() for d in detections]})


async def serve(detector: BaselineModel, port: int) -> None:
    """Serve on 127.0.0.1 until cancelled (SIGTERM ends the process)."""
    app = web.Application(client_max_size=20 * 1024 * 1024)
    app[DETECTOR_KEY] = detector
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    for address in runner.addresses:
        print(f"naive server on http://127.0.0.1:{address[1]}/predict", file=sys.stderr, flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, metavar="PREFIX")
    parser.add_argument("--edge", required=True, type=int)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model-code", choices=MODEL_CODES, default="plain")
    args = parser.parse_args()
    detector = load_baseline_model(args.model_code, args.model, args.edge, 1)
    asyncio.run(serve(detector, args.port))


if __name__ == "__main__":
    main()
