"""The benchmarks' own parts that decide what a figure means (`bench/`).

The baselines of `make bench-compare` must compute what predictor computes
(or the comparison would be of different work), and pooled load runs must
add up. The peers' pure parts are tested here (contenders and views, rows,
the BENCHMARKS section, the handler's two views in-process, stopping a
process tree); the peer servers themselves (Java, BentoML, Ray) are too slow
to start in `make test`: `python -m bench.peer_check` starts each one.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from aiohttp import web

from bench.bench_server import ReplicaLoader, offline_rate, paired_overhead_ms
from bench.compare import (
    CONTENDERS,
    LOADGEN,
    PEERS,
    PERF_ANALYZER,
    SMALL,
    Contender,
    ModelCase,
    Results,
    command_line,
    find,
    offline_rows,
    parse_contenders,
    perf_analyzer_rows,
    render_section,
    rotated,
    rows_for,
    shrink,
    verdicts,
)
from bench.loadgen import LoadResult, drive, machine_share
from bench.peer_check import compare_answers
from bench.peer_handler import HandlerConfig, PeerDetector, decode_as_deployed
from bench.peer_venv import PeerProcess
from bench.perf_analyzer_load import PerfAnalyzerResult
from bench.plain_model import PlainDetector, load_baseline_model
from predictor.detections import to_detections
from predictor.runtime.imaging import prepare
from predictor.runtime.model import Detector

from .conftest import REPO_ROOT, SMALL_EDGE, encode_jpeg, scene


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
    first = LoadResult(16, 2.0, [10.0, 20.0], Counter({200: 2}), cpu_s=0.5)
    second = LoadResult(16, 3.0, [30.0], Counter({200: 1, 503: 4}), cpu_s=1.0)
    pooled = LoadResult.pooled([first, second])
    assert pooled.concurrency == 16
    assert pooled.wall_s == 5.0
    assert pooled.cpu_s == 1.5 and pooled.cpu_share == pytest.approx(machine_share(1.5, 5.0))
    assert pooled.statuses == Counter({200: 3, 503: 4})
    assert pooled.throughput_rps == pytest.approx(3 / 5.0)
    assert pooled.percentile_ms(50) == 20.0
    assert first.latencies_ms == [10.0, 20.0]  # the runs themselves are unchanged


def test_one_client_overhead_pairs_each_request_with_its_own_photo() -> None:
    # Two small photos (30 ms offline) and a large one (70 ms), sent in a mix
    # that favours the large one; the server adds 2 ms to each request.
    sent = [30.0, 30.0, 70.0, 70.0, 70.0]
    http = [ms + 2.0 for ms in sent]
    # Against the offline median of the photos, the HTTP median looks 42 ms slower...
    assert statistics.median(http) - statistics.median([30.0, 30.0, 70.0]) == pytest.approx(42.0)
    # ...while each request, set against its own photo, shows the 2 ms.
    assert paired_overhead_ms(http, sent) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="as many"):
        paired_overhead_ms(http, sent[:-1])


# ------------------------------------------------------------ the peers of bench-compare


def test_contenders_are_parsed_with_their_views() -> None:
    parsed = parse_contenders("predictor, mms, torchserve:as_deployed,naive,mms")
    assert [(c.name, c.view) for c in parsed] == [
        ("predictor", "as_deployed"),
        ("mms", "as_deployed"),
        ("mms", "same_handler"),
        ("torchserve", "as_deployed"),
        ("naive", "same_handler"),
    ]
    assert [str(c) for c in parsed] == [
        "predictor",
        "mms:as_deployed",
        "mms:same_handler",
        "torchserve:as_deployed",
        "naive",
    ]
    every = parse_contenders(",".join(CONTENDERS))
    assert len(every) == 2 + 2 * len(PEERS)
    assert {c.name for c in every} == {
        "predictor",
        "naive",
        "mms",
        "torchserve",
        "bentoml",
        "rayserve",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("triton", "contender 'triton': expected one of"),
        ("naive:as_deployed", "naive has no view 'as_deployed'"),
        ("predictor:same_handler", "predictor has no view 'same_handler'"),
        ("bentoml:fast", "bentoml has no view 'fast'"),
        (" , ", "no contender given"),
    ],
)
def test_unknown_contenders_and_views_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_contenders(text)


def _results(concurrency: int, rps: float) -> LoadResult:
    return LoadResult(
        concurrency,
        10.0,
        [100.0, 200.0] * int(rps * 5),
        Counter({200: int(rps * 10)}),
        cpu_s=0.1 * (os.cpu_count() or 1) * 10.0,  # 10 % of the machine
    )


def _rows(case: ModelCase) -> list[dict[str, Any]]:
    """Rows of a run: predictor, naive, MMS in both views, Ray Serve as deployed, offline."""
    rates = {
        Contender("predictor", "as_deployed"): 20.0,
        Contender("naive", "same_handler"): 10.0,
        Contender("mms", "same_handler"): 16.0,
        Contender("mms", "as_deployed"): 8.0,
        Contender("rayserve", "as_deployed"): 25.0,
    }
    rows = offline_rows(case, "float32", {"limit_rps": 30.0, "single_image_ms": 33.0})
    for who, rps in rates.items():
        rows += rows_for(case, who, "float32", [_results(c, rps) for c in case.levels])
    # perf_analyzer on predictor's v2 route, two rounds: 27 and 29 req/s.
    rounds = [
        [PerfAnalyzerResult(c, rps, 40.0, 90.0, 30, cpu_share) for c in case.levels]
        for rps, cpu_share in ((27.0, 0.02), (29.0, 0.04))
    ]
    return rows + perf_analyzer_rows(case, "float32", rounds)


def test_rows_keep_their_schema_and_say_their_view() -> None:
    case = shrink(SMALL)
    rows = _rows(case)
    fields = {"model", "contender", "view", "dtype", "concurrency", "throughput_rps"}
    fields |= {"p50_ms", "p99_ms", "load_generator", "loadgen_cpu_share"}
    assert all(set(row) == fields for row in rows)
    assert {row["loadgen_cpu_share"] for row in rows} == {None, 0.1, 0.03}
    generators = {(row["contender"], row["load_generator"]) for row in rows}
    assert ("predictor", "perf_analyzer") in generators and ("mms", "bench.loadgen") in generators
    assert {g for who, g in generators if who != "predictor"} <= {"bench.loadgen", None}
    driven = find(rows, contender="predictor", load_generator="perf_analyzer", concurrency=1)
    assert driven is not None and driven["throughput_rps"] == pytest.approx(28.0)
    views = {(row["contender"], row["view"]) for row in rows}
    assert views == {
        ("offline", "same_handler"),
        ("predictor", "as_deployed"),
        ("naive", "same_handler"),
        ("mms", "same_handler"),
        ("mms", "as_deployed"),
        ("rayserve", "as_deployed"),
    }
    mms = find(rows, contender="mms", view="as_deployed", concurrency=1)
    assert mms is not None and mms["throughput_rps"] == pytest.approx(8.0)


def test_the_section_has_a_table_per_view_with_predictor_in_both() -> None:
    case = shrink(SMALL)
    rows = _rows(case)
    counts = {str(c): 1 for c in parse_contenders(",".join(CONTENDERS))}
    detail = {
        "offline": {"limit_rps": 30.0, "limit_mode": "serial, batch 4"},
        "batch": 4,
        "levels": case.levels,
        "time_limit_s": 5.0,
        "rounds": 2,
        "cpu_threads": None,
        **{who: {str(c): {"requests": n} for c in case.levels} for who, n in counts.items()},
        "measured": {"date": "2026-12-01", "command": "x", "machine": "m"},
    }
    meta = {"photos": 3, "baseline_model": "plain"}
    # As stored in compare-details.json by an earlier run (the levels' keys become text).
    stored = json.loads(json.dumps(detail))
    text = render_section(rows, {f"{case.name}/float32": stored}, meta)
    assert "### ssd300_digits_shapes, float32\n\nMeasured 2026-12-01 with `x` on m. " in text
    same, deployed = text.split("Same handler:")[1].split("As deployed:")
    assert "| 1 | predictor | 1 | 20.00 |" in same and "| 1 | predictor | 1 | 20.00 |" in deployed
    assert "| 1 | mms (same handler) | 1 | 16.00 |" in same
    assert "| 1 | naive | 1 | 10.00 |" in same and "naive" not in deployed.split("Targets")[0]
    assert "| 1 | offline |  | 30.00 |" in same and "offline |" not in deployed
    assert "| 1 | mms (as deployed) | 1 | 8.00 |" in deployed
    assert "| 1 | rayserve (as deployed) | 1 | 25.00 |" in deployed
    assert "TorchServe 0.12.0" in text and "Ray Serve 2.60.0" in text
    # predictor 20 req/s against MMS's 16 with the same handler, and Ray Serve's 25 beats it.
    targets = text.split("Targets:")[1]
    assert "NOT met: rayserve (as deployed) at concurrency 1 (25.00 vs 20.00)" in targets
    # perf_analyzer's rows have their own table and efficiency line, and nothing else.
    assert "| 1 | 20.00 | 150.0 | 200.0 | 10.0% | 28.00 | 40.0 | 90.0 | 3.0% |" in text
    assert "28.00" not in same and "28.00" not in deployed.split("predictor under two")[0]


def test_efficiency_is_judged_per_load_generator_dtype_and_client_count() -> None:
    rows = _rows(SMALL)
    rows += offline_rows(SMALL, "int8", {"limit_rps": 40.0, "single_image_ms": 20.0})
    int8 = Contender("predictor", "as_deployed")
    rows += rows_for(SMALL, int8, "int8", [_results(c, 38.0) for c in SMALL.levels])
    lines = verdicts(rows)
    # float32: 20 req/s of an offline 30 under bench.loadgen; 28 under perf_analyzer.
    for clients in (16, 64):
        expected = {
            f"float32, {clients} clients, driven by bench.loadgen: efficiency (predictor / "
            "offline limit) **0.67**; the load generator took 10.0% of the CPU; target >= 0.9: "
            "NOT met",
            f"float32, {clients} clients, driven by perf_analyzer: efficiency (predictor / "
            "offline limit) **0.93**; the load generator took 3.0% of the CPU; target >= 0.9: met",
            f"int8, {clients} clients, driven by bench.loadgen: efficiency (predictor / "
            "offline limit) **0.95**; the load generator took 10.0% of the CPU; target >= 0.9: met",
        }
        for text in expected:
            assert sum(text in line for line in lines) == 1, text


def test_efficiency_is_judged_against_the_limits_measured_around_predictors_levels() -> None:
    rows = _rows(SMALL)  # the run's limit: 30 images/s; predictor 20 and 28 req/s
    details = {
        "ssd300_digits_shapes/float32": {
            # Two rounds of bench.loadgen's levels, one of perf_analyzer's.
            "limits_around_predictor": {"bench.loadgen": [[21.0, 22.0], [23.0, 22.0]]},
            "limit_passes_around": 18,
        }
    }
    lines = verdicts(rows, details)
    loadgen = [x for x in lines if "float32, 16 clients, driven by bench.loadgen" in x]
    assert len(loadgen) == 1
    # 20 / mean(21, 22, 23, 22) = 0.91, where the run's limit would read 0.67.
    against = (
        "(predictor / the limit around its levels, each over 18 passes of the photos, "
        "21.0 / 22.0 / 23.0 / 22.0) **0.91**"
    )
    assert against in loadgen[0]
    assert loadgen[0].endswith("target >= 0.9: met.")
    # perf_analyzer's levels have no limits of their own here: the run's limit it is.
    perf = [x for x in lines if "float32, 16 clients, driven by perf_analyzer" in x]
    assert len(perf) == 1 and "(predictor / offline limit) **0.93**" in perf[0]


def test_each_load_generator_goes_first_in_every_other_round() -> None:
    both = [LOADGEN, PERF_ANALYZER]
    firsts = [rotated(both, round_index)[0] for round_index in range(4)]
    assert firsts == [LOADGEN, PERF_ANALYZER, LOADGEN, PERF_ANALYZER]
    # Every round still runs each generator once, and the caller's list is left as it was.
    assert all(sorted(rotated(both, r)) == sorted(both) for r in range(4))
    assert both == [LOADGEN, PERF_ANALYZER]
    assert rotated([LOADGEN], 1) == [LOADGEN]
    # The contenders rotate the same way: each round starts one later.
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_peer_targets_take_the_best_peer_of_each_view() -> None:
    lines = verdicts(_rows(SMALL))
    deployed = [x for x in lines if "16 clients, as deployed" in x]
    same = [x for x in lines if "16 clients, same handler" in x]
    # As deployed: Ray Serve's 25 req/s is the best peer (MMS 8); same handler: MMS's 16.
    assert len(deployed) == 1 and "(peers measured: mms, rayserve)" in deployed[0]
    assert "**0.80x** the best, rayserve (as deployed) 25.0; target >= 1.5x: NOT met" in deployed[0]
    assert len(same) == 1 and "**1.25x** the best, mms (same handler) 16.0" in same[0]
    assert "target >= 1.2x: met" in same[0]
    assert any("1 client: p99 predictor" in x and "target <= 1.2x: met" in x for x in lines)


@pytest.mark.parametrize("mode", ["serial", "overlapped"])
def test_the_offline_limit_runs_every_replica_the_server_would(
    small_model_prefix: Path, tmp_path: Path, mode: str
) -> None:
    files = []
    for seed in range(6):
        files.append(tmp_path / f"{seed}.jpg")
        files[-1].write_bytes(encode_jpeg(scene(seed)))
    replicas = ReplicaLoader(small_model_prefix, SMALL_EDGE, engine_threads=1, replicas=2)(2)
    try:
        assert len(replicas) == 2
        before = [detector.batches_run for detector in replicas]
        rate = offline_rate(replicas, files, mode, passes=2, workers=2)
        # 12 images, 6 per replica in batches of 2: three forward passes each.
        assert [d.batches_run - b for d, b in zip(replicas, before, strict=True)] == [3, 3]
        assert rate > 0
    finally:
        for detector in replicas:
            detector.close()


def test_bfloat16_is_set_beside_the_float32_peers_not_judged_as_a_target() -> None:
    rows = _rows(SMALL)
    brief = Contender("predictor", "as_deployed")
    rows += rows_for(SMALL, brief, "bfloat16", [_results(c, 50.0) for c in SMALL.levels])
    lines = [x for x in verdicts(rows) if "**bfloat16**" in x]
    # 50 req/s against Ray Serve's 25 as deployed and MMS's 16 with the same handler.
    assert len(lines) == 2
    assert "as deployed, predictor in **bfloat16**" in lines[0] and "**2.00x** rayserve" in lines[0]
    assert "same handler" in lines[1] and "**3.12x** mms (same handler) 16.0" in lines[1]
    assert not any("target >=" in x or "met" in x for x in lines)
    # The float32 targets still judge predictor's float32 rows.
    deployed = [x for x in verdicts(rows) if "16 clients, as deployed (peers" in x]
    assert len(deployed) == 1 and "**0.80x**" in deployed[0]


def test_a_run_replaces_the_models_it_measures_and_keeps_the_others(tmp_path: Path) -> None:
    small, coco = _rows(shrink(SMALL)), _rows(replace(shrink(SMALL), name="coco_nanodet"))
    rows_path, details_path = tmp_path / "compare.json", tmp_path / "details.json"
    first = Results.load(rows_path, details_path)  # no files yet: nothing stored
    first.replace(
        small + coco, {"ssd300_digits_shapes/float32": {"a": 1}, "coco_nanodet/float32": {"a": 2}}
    )
    first.save(rows_path, details_path)
    # A later run measures the digits model only: its rows and details replace the old ones.
    again = [dict(row, throughput_rps=99.0) for row in small]
    later = Results.load(rows_path, details_path)
    later.replace(again, {"ssd300_digits_shapes/float32": {"a": 3}})
    assert later.details == {
        "coco_nanodet/float32": {"a": 2},
        "ssd300_digits_shapes/float32": {"a": 3},
    }
    assert sorted(map(str, later.rows)) == sorted(map(str, coco + again))
    assert Results.load(rows_path, details_path, fresh=True) == Results([], {})


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        ([], "make bench-compare"),
        (["--int8"], "make bench-compare"),
        (
            ["--models", "", "--contenders", "predictor", "--int8"],
            "python -m bench.compare --models '' --contenders predictor --int8",
        ),
        (
            ["--models", "coco", "--json", "/tmp/c.json", "--markdown=/tmp/B.md", "--fresh"],
            "python -m bench.compare --models coco --fresh",
        ),
    ],
)
def test_a_section_quotes_the_command_without_its_output_paths(
    argv: list[str], command: str
) -> None:
    assert command_line(argv) == command


def test_handler_configuration_round_trips_and_refuses_unknown_views(tmp_path: Path) -> None:
    config = HandlerConfig(
        repo_root="/repo", prefix="ssd", edge=300, batch_size=4, view="as_deployed"
    )
    config.write(tmp_path / "handler_config.json")
    read = HandlerConfig.read(tmp_path / "handler_config.json")
    assert read == replace(config, prefix=str(tmp_path / "ssd"))
    with pytest.raises(ValueError, match="view 'both'"):
        HandlerConfig(repo_root="/", prefix="p", edge=1, batch_size=1, view="both")
    with pytest.raises(ValueError, match="decoder 'turbo'"):
        HandlerConfig(repo_root="/", prefix="p", edge=1, batch_size=1, decoder="turbo")


@pytest.mark.parametrize("decoder", ["mxnet", "pil", "opencv"])
def test_each_as_deployed_decoder_gives_bgr_pixels_at_the_asked_size(decoder: str) -> None:
    image = scene(3, 640, 480)
    pixels, size = decode_as_deployed(
        encode_jpeg(image, 95), decoder, lambda w, h: (w // 2, h // 2)
    )
    assert size == (640, 480)
    assert pixels.shape == (240, 320, 3) and pixels.dtype == np.uint8
    reference = cv2.resize(image, (320, 240), interpolation=cv2.INTER_LINEAR).astype(np.int16)
    # The same picture, channels in OpenCV's order: the libraries' resizes differ only slightly.
    assert np.abs(pixels.astype(np.int16) - reference).mean() < 4


def test_peer_detector_views_find_what_predictor_finds(
    small_model_prefix: Path, detectors: list[Detector]
) -> None:
    bodies = [encode_jpeg(scene(seed, 1280, 720)) for seed in range(3)] + [b"not a jpeg"]
    config = HandlerConfig(str(REPO_ROOT), str(small_model_prefix), SMALL_EDGE, 4)
    same = PeerDetector(config).detect(bodies)
    deployed = PeerDetector(replace(config, view="as_deployed", decoder="pil")).detect(bodies)
    ours = detectors[0]
    for body, a, b in zip(bodies[:3], same, deployed, strict=False):
        image = prepare(body, ours.preprocessing, 2**31 - 1)
        (raw,) = ours.forward([image.tensor])
        expected = {
            "prediction": [
                d.to_json() for d in to_detections(raw, image.placement, ours.classes, 0.5)
            ]
        }
        assert compare_answers(expected, a) is None
        assert [d["objectClass"] for d in b["prediction"]] == [
            d["objectClass"] for d in expected["prediction"]
        ]
    assert "error" in same[3] and "error" in deployed[3]


def test_answers_compare_by_class_box_and_probability() -> None:
    one = {"objectClass": "7", "probability": 0.9, "x": 10, "y": 20, "width": 30, "height": 40}
    assert compare_answers({"prediction": [one]}, {"prediction": [dict(one, x=12)]}) is None
    assert "3 px" in str(compare_answers({"prediction": [one]}, {"prediction": [dict(one, x=13)]}))
    assert "probability" in str(
        compare_answers({"prediction": [one]}, {"prediction": [dict(one, probability=0.8)]})
    )
    assert "classes" in str(compare_answers({"prediction": [one]}, {"prediction": []}))
    assert "no prediction" in str(compare_answers({"prediction": [one]}, {"error": "x"}))


def test_a_peer_process_tree_is_stopped_whole(tmp_path: Path) -> None:
    # A command that starts two children, one of which ignores SIGTERM: SIGKILL ends it.
    script = "sleep 60 & (trap '' TERM; sleep 60) & wait"
    process = PeerProcess(["bash", "-c", script], cwd=tmp_path, env={}, log=tmp_path / "log")
    deadline = time.monotonic() + 10
    while len(process.members()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    members = process.members()
    assert len(members) >= 3
    assert process.stop(grace_s=0.5, term_s=0.5) == []
    assert not any(Path(f"/proc/{pid}").exists() and _running(pid) for pid in members)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_loadgen_uploads_a_multipart_file_for_servers_that_take_files(
    aiohttp_server: Any,
) -> None:
    seen: list[tuple[str, bytes]] = []

    async def handler(request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            form = await request.post()
            field = form["images"]
            assert isinstance(field, web.FileField)
            seen.append(("form", field.file.read()))
        else:
            seen.append((request.content_type, await request.read()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/predict", handler)
    server = await aiohttp_server(app)
    url = str(server.make_url("/predict"))
    raw = await drive(url, [b"one"], 1, 1, 10.0)
    form = await drive(url, [b"two"], 1, 1, 10.0, form_field="images")
    assert raw.ok == 1 and form.ok == 1
    assert raw.cpu_s > 0 and 0 < raw.cpu_share < 1
    assert seen == [("image/jpeg", b"one"), ("form", b"two")]


def test_the_int8_report_says_which_int8_instructions_the_cpu_has() -> None:
    from bench.int8_report import int8_instructions

    assert int8_instructions({"fpu", "avx2", "avx512f", "avx512_vnni", "amx_int8"}).startswith(
        "AVX-512 VNNI"
    )
    assert int8_instructions({"fpu", "avx2", "avx_vnni"}).startswith("AVX-VNNI")
    assert int8_instructions({"fpu", "sse4_2", "avx2", "fma"}).startswith("AVX2, no VNNI")
    assert int8_instructions({"fpu", "sse4_2"}).startswith("no AVX2")
    assert int8_instructions(set()).startswith("no AVX2")
