"""What reduced-scale JPEG decoding costs in detections, and what it saves in time.

A checkpoint may allow libjpeg's DCT scaling (``reduced_decoding`` in its
preprocessing declaration): a large photo is decoded at 1/2, 1/4 or 1/8 of
its size when that still covers the network input. This runs the same model
on the same photos both ways and reports, per photo size: the decode +
preprocess time, how many detections (above the default threshold) agree
(same class, IoU >= 0.5), the largest probability difference among them, and
the largest box-edge shift in pixels of the original image.

    python -m bench.reduced_decoding [--model PREFIX] [--photos 24]

Writes bench/reduced_decoding.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from predictor.config import SHIPPED_MODEL_PREFIX, DeviceSpec
from predictor.detections import Detection, to_detections
from predictor.runtime.imaging import prepare
from predictor.runtime.model import load_detectors
from tests.support.photos import make_photos

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
THRESHOLD = 0.5


def _iou(a: Detection, b: Detection) -> float:
    w = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    h = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    union = a.width * a.height + b.width * b.height - w * h
    return w * h / union if union else 0.0


def compare(full: list[Detection], reduced: list[Detection]) -> dict[str, Any]:
    """Greedy same-class matching at IoU >= 0.5; what differs between the two lists."""
    unmatched = list(reduced)
    matched = 0
    prob_diff = 0.0
    shift = 0
    for want in full:
        best = max(
            (d for d in unmatched if d.object_class == want.object_class),
            key=lambda d: _iou(d, want),
            default=None,
        )
        if best is None or _iou(best, want) < 0.5:
            continue
        unmatched.remove(best)
        matched += 1
        prob_diff = max(prob_diff, abs(best.probability - want.probability))
        edges_a = (want.x, want.y, want.x + want.width, want.y + want.height)
        edges_b = (best.x, best.y, best.x + best.width, best.y + best.height)
        shift = max(shift, *(abs(p - q) for p, q in zip(edges_a, edges_b, strict=True)))
    return {
        "full": len(full),
        "reduced": len(reduced),
        "matched": matched,
        "max_probability_difference": prob_diff,
        "max_edge_shift_px": shift,
    }


def main() -> None:
    """Measure and write bench/reduced_decoding.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / SHIPPED_MODEL_PREFIX)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    detector = load_detectors(args.model, 0, None, DeviceSpec(), 1)[0]
    allowed = replace(detector.preprocessing, reduced_decoding=True)
    full_size = replace(detector.preprocessing, reduced_decoding=False)
    rows: dict[str, dict[str, Any]] = {}
    for path in make_photos(WORK / "photos", args.photos):
        data = path.read_bytes()
        answers = {}
        for name, preprocessing in (("full", full_size), ("reduced", allowed)):
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                image = prepare(data, preprocessing, 2**31 - 1)
                times.append((time.perf_counter() - started) * 1000.0)
            (raw,) = detector.forward([image.tensor])
            answers[name] = (
                to_detections(raw, image.placement, detector.classes, THRESHOLD),
                statistics.median(times),
            )
        size = path.stem.rsplit("_", 1)[-1]
        row = rows.setdefault(
            size, {"photos": 0, "full_ms": [], "reduced_ms": [], "comparisons": []}
        )
        row["photos"] += 1
        row["full_ms"].append(answers["full"][1])
        row["reduced_ms"].append(answers["reduced"][1])
        row["comparisons"].append(compare(answers["full"][0], answers["reduced"][0]))
    sizes: dict[str, Any] = {}
    report = {"model": str(args.model), "threshold": THRESHOLD, "sizes": sizes}
    for size, row in rows.items():
        comparisons = row["comparisons"]
        sizes[size] = {
            "photos": row["photos"],
            "decode_preprocess_ms_full": round(statistics.median(row["full_ms"]), 2),
            "decode_preprocess_ms_reduced": round(statistics.median(row["reduced_ms"]), 2),
            "detections_full": sum(c["full"] for c in comparisons),
            "detections_reduced": sum(c["reduced"] for c in comparisons),
            "matched": sum(c["matched"] for c in comparisons),
            "max_probability_difference": round(
                max(c["max_probability_difference"] for c in comparisons), 4
            ),
            "max_edge_shift_px": max(c["max_edge_shift_px"] for c in comparisons),
        }
    out = ROOT / "bench" / "reduced_decoding.json"
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
