"""Check the contenders of `make bench-compare` before trusting their figures: a few requests each.

``python -m bench.peer_check [--contenders mms,torchserve,bentoml,rayserve] [--requests 20]``

Starts predictor and then each contender through the benchmark's own code
path (`bench.compare.contender`) on the shipped digits model, sends the same
benchmark photos to each (4 clients at a time, so that the servers batch),
and compares every answer with predictor's: in the ``same_handler`` view the
detections must be the same (the same classes in the same order, each box
within `BOX_TOLERANCE_PX` pixels and each probability within
`PROBABILITY_TOLERANCE`: the peers run the plain MXNet graph, predictor its
fused one); in the ``as_deployed`` view, which decodes and resizes
differently, the differences are reported, not judged. After each server is
stopped, no process may be left whose command line names the peer's venv or
folder. Not a benchmark: no timing here means anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.compare import PEERS, SMALL, WORK, Contender, Endpoint, contender, parse_contenders
from bench.loadgen import post
from tests.support.photos import make_photos

BOX_TOLERANCE_PX = 2
PROBABILITY_TOLERANCE = 1e-3
BATCH = 4
CLIENTS = 4


def compare_answers(reference: dict[str, Any], answer: dict[str, Any]) -> str | None:
    """None when ``answer`` holds the same detections as ``reference``, else what differs."""
    if "prediction" not in answer:
        return f"no prediction: {json.dumps(answer)[:200]}"
    ours, theirs = reference["prediction"], answer["prediction"]
    if [d["objectClass"] for d in ours] != [d["objectClass"] for d in theirs]:
        return f"classes {[d['objectClass'] for d in ours]} vs {[d['objectClass'] for d in theirs]}"
    for a, b in zip(ours, theirs, strict=True):
        box = max(abs(a[key] - b[key]) for key in ("x", "y", "width", "height"))
        if box > BOX_TOLERANCE_PX:
            return f"{a['objectClass']}: a box edge {box} px apart"
        if abs(a["probability"] - b["probability"]) > PROBABILITY_TOLERANCE:
            return f"{a['objectClass']}: probability {a['probability']} vs {b['probability']}"
    return None


async def fetch_all(endpoint: Endpoint, bodies: list[bytes]) -> list[tuple[int, Any]]:
    """Every body POSTed once, `CLIENTS` at a time; (status, decoded JSON or text) in order."""
    answers: list[tuple[int, Any]] = [(0, None)] * len(bodies)
    queue = list(enumerate(bodies))
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            while queue:
                index, body = queue.pop(0)
                async with post(session, endpoint.url, body, endpoint.form_field) as response:
                    text = await response.text()
                    try:
                        answer = json.loads(text)
                    except ValueError:
                        answer = text
                    # A batchable BentoML API answers each request with a list: one per file sent.
                    if isinstance(answer, list) and len(answer) == 1:
                        answer = answer[0]
                    answers[index] = (response.status, answer)

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return answers


def processes_naming(texts: list[str]) -> list[str]:
    """Live processes whose command line contains any of ``texts``: "pid command"."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(text in command for text in texts):
            found.append(f"{entry.name} {command[:160]}")
    return found


def check(who: Contender, bodies: list[bytes], reference: list[dict[str, Any]] | None) -> bool:
    """Start, query, compare, stop and look for leftovers; print what was seen; True if good."""
    started = time.monotonic()
    answers: list[tuple[int, Any]] = []
    try:
        with contender(who, SMALL, SMALL.prefix, BATCH, "float32", "plain") as endpoint:
            up_s = time.monotonic() - started
            answers = asyncio.run(fetch_all(endpoint, bodies))
    except (RuntimeError, OSError, aiohttp.ClientError, subprocess.CalledProcessError) as exc:
        print(f"{who}: FAILED: {str(exc)[-2000:]}", flush=True)
    statuses = sorted({status for status, _ in answers})
    ok = statuses == [200]
    if answers:
        print(f"{who}: up in {up_s:.0f} s at {endpoint.url}; statuses {statuses}", flush=True)
    if reference is not None and answers:
        differences = [
            (index, compare_answers(ref, answer if isinstance(answer, dict) else {}))
            for index, (ref, (_, answer)) in enumerate(zip(reference, answers, strict=True))
        ]
        differing = [(index, text) for index, text in differences if text is not None]
        found = sum(len(a.get("prediction", [])) for _, a in answers if isinstance(a, dict))
        classes = sum(
            1
            for _, text in differing
            if text is not None and not text.startswith(("classes", "no "))
        )
        print(
            f"  {len(bodies) - len(differing)} of {len(bodies)} answers the same as predictor's, "
            f"{len(bodies) - len(differing) + classes} with the same classes "
            f"({found} detections in all)",
            flush=True,
        )
        for index, text in differing[:5]:
            print(f"  photo {index}: {text}", flush=True)
        if who.view == "same_handler" and differing:
            ok = False
    if who.name in PEERS:
        venv = PEERS[who.name].venv
        left = processes_naming([str(venv.path), str(WORK / venv.name)])
        print(f"  processes left after stop: {len(left)}", flush=True)
        for line in left:
            print(f"    {line}", flush=True)
        ok = ok and not left
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contenders", default=",".join(PEERS))
    parser.add_argument("--requests", type=int, default=20, help="photos sent to each")
    args = parser.parse_args()
    contenders = parse_contenders(args.contenders)
    bodies = [path.read_bytes() for path in make_photos(WORK / "photos", args.requests)]
    own = Contender("predictor", "as_deployed")
    with contender(own, SMALL, SMALL.prefix, BATCH, "float32", "plain") as endpoint:
        answers = asyncio.run(fetch_all(endpoint, bodies))
    reference = [answer for _, answer in answers]
    print(f"predictor: {sum(len(a['prediction']) for a in reference)} detections", flush=True)
    failed = [str(who) for who in contenders if not check(who, bodies, reference)]
    print("all good" if not failed else f"FAILED: {', '.join(failed)}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
