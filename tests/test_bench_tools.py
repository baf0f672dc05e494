"""The benchmarks' own parts that decide what a figure means (`bench/`).

The baselines of `make bench-compare` must compute what predictor computes
(or the comparison would be of different work), and pooled load runs must
add up.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench.loadgen import LoadResult
from bench.plain_model import PlainDetector, load_baseline_model
from predictor.detections import to_detections
from predictor.runtime.imaging import prepare
from predictor.runtime.model import Detector

from .conftest import SMALL_EDGE, encode_jpeg, scene


def test_the_plain_baseline_finds_what_predictor_finds(
    small_model_prefix: Path, detectors: list[Detector]
) -> None:
    images = [prepare(encode_jpeg(scene(seed)), SMALL_EDGE, 2**31 - 1) for seed in range(3)]
    tensors = [image.tensor for image in images]
    plain = PlainDetector(small_model_prefix, SMALL_EDGE, 3)
    plain.warm_up()
    ours = detectors[0].forward(tensors)
    theirs = plain.forward(tensors)
    assert plain.classes == detectors[0].classes
    found = 0
    for image, a, b in zip(images, ours, theirs, strict=True):
        # Fused oneDNN kernels round differently from the plain graph's.
        assert np.allclose(a.scores, b.scores, atol=1e-4)
        confident = a.scores > 0.05
        assert np.array_equal(a.class_ids[confident], b.class_ids[confident])
        assert np.allclose(a.boxes[confident], b.boxes[confident], atol=1e-2)
        found += len(to_detections(a, image.placement, plain.classes, 0.5))
    assert found >= 3, "the scenes hold objects"


def test_an_unknown_baseline_model_code_is_refused(small_model_prefix: Path) -> None:
    with pytest.raises(ValueError, match="model code 'fast'"):
        load_baseline_model("fast", small_model_prefix, SMALL_EDGE, 1)


def test_pooled_runs_add_requests_and_wall_time() -> None:
    first = LoadResult(16, 2.0, [10.0, 20.0], Counter({200: 2}))
    second = LoadResult(16, 3.0, [30.0], Counter({200: 1, 503: 4}))
    pooled = LoadResult.pooled([first, second])
    assert pooled.concurrency == 16
    assert pooled.wall_s == 5.0
    assert pooled.statuses == Counter({200: 3, 503: 4})
    assert pooled.throughput_rps == pytest.approx(3 / 5.0)
    assert pooled.percentile_ms(50) == 20.0
    assert first.latencies_ms == [10.0, 20.0]  # the runs themselves are unchanged
