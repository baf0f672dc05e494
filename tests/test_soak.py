"""Memory stays flat under sustained load: a short version of `make soak` (bench/soak.py).

2,000 requests of the soak's mix (photos of many sizes, progressive,
grayscale, EXIF-rotated, 12- and 16-bit, drawn answers, v2 binary and JSON,
refused bodies) through a real `predictor serve`, its RSS read at rest
(idle, and trimmed) after the warm-up (the first 400) and every 400 requests
after it. The RSS at rest must end less than `MAX_GROWTH` above where it
started and above its lowest reading,
the slope fitted to it must stay under `MAX_SLOPE`, every answer must be the
expected one, and SIGTERM must stop the server with exit code 0. The
100,000-request figures and their plot are in BENCHMARKS.md.

The second test shows that these bounds catch a real leak: the same soak
against a deliberately leaking build of the ``/predict`` handler (each
request keeps 50 KB, `bench/memprobe/sitecustomize.py`) must fail them.
"""

from __future__ import annotations

from bench.soak import SoakReport, soak

REQUESTS = 2_000
WARMUP = 0.2
REST_EVERY = 400
# In the builder image (2026-11-29, since issue 16's digits network, three runs) the
# first rest after the warm-up, at 400 or at 800 requests, held 40-60 MiB more anonymous
# memory than every later rest; a run on the host did not (463.7 MiB at 400, 465.9 at
# 800), and the cause is not known. From that higher start a leaking build ended only
# +2.8 % and +0.2 %, so growth is also judged from the lowest rest
# (`SoakReport.rise_from_lowest`): +10.7 % and +6.8 % for those two runs.
# Bounds for 1,600 requests after the warm-up, measured on 2 cores shared with
# other work. Fitted under load (before issue 15's at-rest fit) the server ended
# +1.3 % to +2.2 % with slopes of +2 to +12 MiB per 1,000 requests; at rest
# (2026-11-29, two runs) it ended -0.33 % and +0.28 % with +0.1 and +0.7 MiB
# per 1,000 (a step of 1.4 MiB right after the warm-up, then flat), while a
# build that keeps 50 KB per request (less than a leaked photo body) ended
# +13.8 % and +13.4 % with +46.4 and +43.7 MiB per 1,000, all of it in
# glibc's main heap. The 100,000-request soak (`make soak`) holds the server
# to the real target: 20 KiB per 1,000 requests.
MAX_GROWTH = 0.05
MAX_SLOPE = 20 * 1024 * 1024
LEAK_BYTES = 50_000


def run(leak_bytes: int = 0) -> SoakReport:
    report = soak(
        REQUESTS,
        clients=8,
        warmup_fraction=WARMUP,
        time_limit_s=900,
        leak_bytes=leak_bytes,
        rest_every=REST_EVERY,
    )
    print(report.summary())
    assert sum(report.statuses.values()) == REQUESTS, report.summary()
    assert not report.unexpected, report.summary()
    return report


def test_rss_stays_flat_over_2000_requests() -> None:
    report = run()
    assert report.growth < MAX_GROWTH, report.summary()
    assert report.rise_from_lowest < MAX_GROWTH, report.summary()
    assert report.slope_bytes_per_1000 < MAX_SLOPE, report.summary()


def test_a_leaking_build_fails_the_same_bounds() -> None:
    report = run(leak_bytes=LEAK_BYTES)
    assert not report.passed(MAX_GROWTH, MAX_SLOPE), report.summary()
