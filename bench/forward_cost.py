"""Forward-pass cost of the served networks, side by side in one process.

The COCO model that ships (NanoDet, 416 px, converted from TensorFlow.js)
against the network the original service ran (GluonCV's SSD 512 on
ResNet-50, exported with random weights: the cost does not depend on them)
and the digits model. Each network runs on zeros of its declared input at
batch 1 and 4, the networks alternating pass by pass, so that a slow
stretch of a shared machine falls on all of them; the median per image is
reported. Every core runs the forward pass (MODEL_CPU_THREADS = cores).

    python -m bench.forward_cost [--repeats 8] [--model NAME=PREFIX ...]

`--model` adds a checkpoint to the same run (e.g. the digits model a retrain
replaces, against the one it ships), so that the ratio of two networks comes
from one machine state. `--plain-head NAME` also times network NAME as it was
loaded before three rewrites of `predictor/runtime/graph.py`: its anchors
computed on every pass (not folded), every candidate handed to the
non-maximum suppression (not only the ``topk`` best), its separate pads
and bias additions left beside the convolutions (not folded into them), and
MXNet's slow ``SwapAxis`` and padded max pooling (not replaced).

Writes bench/forward_cost.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from predictor.runtime.threads import configure_openmp

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    """Measure and write bench/forward_cost.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PREFIX",
        help="another checkpoint to time beside the shipped ones",
    )
    parser.add_argument(
        "--plain-head",
        action="append",
        default=[],
        metavar="NAME",
        help="also time NAME without the anchor and convolution folding and the candidate "
        "selection",
    )
    args = parser.parse_args()
    extra = dict(_named_prefix(spec, parser) for spec in args.model)
    threads = os.cpu_count() or 1
    configure_openmp(threads)

    import numpy as np

    from bench.compare import RESNET_PREFIX, ensure_resnet
    from predictor.config import SHIPPED_COCO_PREFIX, SHIPPED_MODEL_PREFIX, DeviceSpec
    from predictor.runtime.model import load_detectors

    ensure_resnet()
    batches = [int(b) for b in args.batches.split(",")]
    prefixes = {
        "coco_nanodet": ROOT / SHIPPED_COCO_PREFIX,
        "ssd_512_resnet50_v1_coco": RESNET_PREFIX,
        "ssd300_digits_shapes": ROOT / SHIPPED_MODEL_PREFIX,
        **extra,
    }
    unknown = set(args.plain_head) - prefixes.keys()
    if unknown:
        parser.error(f"--plain-head: no network named {', '.join(sorted(unknown))}")
    detectors = {
        name: load_detectors(prefix, 0, None, DeviceSpec(), max(batches))[0]
        for name, prefix in prefixes.items()
    }
    for name in args.plain_head:
        with _plain_head():
            detectors[f"{name} (plain head)"] = load_detectors(
                prefixes[name], 0, None, DeviceSpec(), max(batches)
            )[0]
    times: dict[str, dict[int, list[float]]] = {n: {b: [] for b in batches} for n in detectors}
    for _ in range(args.repeats):
        for batch in batches:
            for name, detector in detectors.items():
                zeros = np.zeros(detector.input_shape, dtype=np.float32)
                started = time.perf_counter()
                detector.forward([zeros] * batch)
                times[name][batch].append((time.perf_counter() - started) * 1000.0 / batch)
    report = {
        "threads": threads,
        "repeats": args.repeats,
        "ms_per_image": {
            name: {
                str(batch): round(statistics.median(values), 1)
                for batch, values in by_batch.items()
            }
            for name, by_batch in times.items()
        },
        "input": {name: list(d.input_shape) for name, d in detectors.items()},
    }
    out = ROOT / "bench" / "forward_cost.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


@contextlib.contextmanager
def _plain_head() -> Iterator[None]:
    """Detectors loaded inside keep GluonCV's anchors, get every candidate, and keep their
    separate pads and bias additions.

    A benchmark's comparison, not a setting users need: the loader's own
    references to the two rewrites (its module imports them by name) are
    swapped for the earlier behaviour while inside.
    """
    from predictor.runtime import graph, model

    def keep_anchors(symbol: Any, weights: Any, input_shape: Any) -> tuple[Any, Any]:
        return symbol, weights

    def every_candidate(symbol: Any, input_shape: tuple[int, ...] | None = None) -> Any:
        return graph.merge_detection_head(symbol)

    def keep_convolutions(symbol: Any, weights: Any) -> tuple[Any, Any]:
        return symbol, weights

    def keep_operators(symbol: Any, input_shape: Any) -> Any:
        return symbol

    swapped = {
        "fold_anchors": keep_anchors,
        "merge_detection_head": every_candidate,
        "fold_into_convolutions": keep_convolutions,
        "use_faster_operators": keep_operators,
    }
    saved = {name: getattr(model, name) for name in swapped}
    for name, stand_in in swapped.items():
        setattr(model, name, stand_in)
    try:
        yield
    finally:
        for name, original in saved.items():
            setattr(model, name, original)


def _named_prefix(spec: str, parser: argparse.ArgumentParser) -> tuple[str, Path]:
    """Split `NAME=PREFIX`, refusing a prefix with no symbol file beside it."""
    name, separator, prefix = spec.partition("=")
    if not separator or not name or not prefix:
        parser.error(f"--model {spec!r}: expected NAME=PREFIX")
    if not Path(f"{prefix}-symbol.json").is_file():
        parser.error(f"--model {spec!r}: no checkpoint at {prefix}-symbol.json")
    return name, Path(prefix)


if __name__ == "__main__":
    main()
