"""What reduced-scale JPEG decoding costs in detections, and what it saves in time.

A checkpoint may allow libjpeg's DCT scaling (``reduced_decoding`` in its
preprocessing declaration): a large photo is decoded at a fraction of its
size that still covers the network input. This runs the same model on the
same photos four ways, interleaved photo by photo:

- ``full``: full-size decoding (what a checkpoint without the flag gets);
- ``halvings``: OpenCV's 1/2, 1/4 or 1/8 (what predictor does);
- ``eighths``: libjpeg-turbo's TurboJPEG API (simplejpeg) at any eighth
  (3/8, 5/8, ...), the smallest that covers the input;
- ``eighths_fast``: the same with TurboJPEG's fast integer IDCT and fast
  upsampling.

The last two are not used by the server: they are measured here to decide
whether they should be (BENCHMARKS.md, "Reduced-scale decoding").

Per photo size: the decode + preprocess time of each, and against ``full``
how many detections (above the default threshold) agree (same class, IoU
>= 0.5), the largest probability difference among them, and the largest
box-edge shift in pixels of the original image.

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

import numpy as np
import simplejpeg

from predictor.checkpoint import Preprocessing
from predictor.config import SHIPPED_MODEL_PREFIX, DeviceSpec
from predictor.detections import Detection, to_detections
from predictor.runtime.imaging import (
    PreparedImage,
    jpeg_header,
    prepare,
    preprocess,
)
from predictor.runtime.model import load_detectors
from tests.support.photos import make_photos

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
THRESHOLD = 0.5
VARIANTS = ("full", "halvings", "eighths", "eighths_fast")


def prepare_variant(data: bytes, variant: str, preprocessing: Preprocessing) -> PreparedImage:
    """Decode + preprocess one photo the way ``variant`` says (the photos carry no EXIF)."""
    if variant in ("full", "halvings"):
        reduced = replace(preprocessing, reduced_decoding=variant == "halvings")
        return prepare(data, reduced, 2**31 - 1)
    header = jpeg_header(data)
    fast = variant == "eighths_fast"
    pixels = simplejpeg.decode_jpeg(
        data,
        colorspace="BGR",
        min_width=preprocessing.width,
        min_height=preprocessing.height,
        fastdct=fast,
        fastupsample=fast,
    )
    tensor, placement = preprocess(
        np.asarray(pixels, np.uint8), preprocessing, displayed=(header.width, header.height)
    )
    return PreparedImage(tensor, placement)


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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    detector = load_detectors(args.model, 0, None, DeviceSpec(), 1)[0]
    if detector.preprocessing.resize != "stretch":
        parser.error(f"{args.model}: only stretched inputs are compared here")
    rows: dict[str, dict[str, Any]] = {}
    for path in make_photos(WORK / "photos", args.photos):
        data = path.read_bytes()
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                started = time.perf_counter()
                prepare_variant(data, variant, detector.preprocessing)
                times[variant].append((time.perf_counter() - started) * 1000.0)
        found = {}
        for variant in VARIANTS:
            image = prepare_variant(data, variant, detector.preprocessing)
            (raw,) = detector.forward([image.tensor])
            found[variant] = to_detections(raw, image.placement, detector.classes, THRESHOLD)
        size = path.stem.rsplit("_", 1)[-1]
        row = rows.setdefault(size, {"photos": 0, **{v: [] for v in VARIANTS}, "comparisons": {}})
        row["photos"] += 1
        for variant in VARIANTS:
            row[variant].append(statistics.median(times[variant]))
            if variant != "full":
                row["comparisons"].setdefault(variant, []).append(
                    compare(found["full"], found[variant])
                )
    sizes: dict[str, Any] = {}
    report = {"model": str(args.model), "threshold": THRESHOLD, "sizes": sizes}
    for size, row in rows.items():
        sizes[size] = {
            "photos": row["photos"],
            **{
                f"decode_preprocess_ms_{variant}": round(statistics.median(row[variant]), 2)
                for variant in VARIANTS
            },
        }
        for variant, comparisons in row["comparisons"].items():
            sizes[size][f"against_full_{variant}"] = {
                "detections_full": sum(c["full"] for c in comparisons),
                "detections": sum(c["reduced"] for c in comparisons),
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
