"""Memory stays flat under sustained load: a short version of `make soak` (bench/soak.py).

2,000 requests of the soak's mix (photos of many sizes, progressive, grayscale,
EXIF-rotated, 12- and 16-bit, drawn answers, refused bodies) through a real
`predictor serve`; after the warm-up (the first 400) the server's RSS must grow
by less than 5 %, every answer must be the expected one, and SIGTERM must stop
the server with exit code 0. The 20,000-request figures are in BENCHMARKS.md.
"""

from __future__ import annotations

from bench.soak import soak

REQUESTS = 2_000
MAX_GROWTH = 0.05


def test_rss_stays_flat_over_2000_requests() -> None:
    report = soak(REQUESTS, clients=8, warmup_fraction=0.2, time_limit_s=900)
    print(report.summary())
    assert sum(report.statuses.values()) == REQUESTS, report.summary()
    assert not report.unexpected, report.summary()
    assert report.growth < MAX_GROWTH, report.summary()
