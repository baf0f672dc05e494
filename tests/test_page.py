"""The web page, end to end: headless Chromium against a real `predictor serve`.

The browser is Debian's ``chromium`` (``make browser`` installs it), driven by
Playwright through ``executable_path``; Playwright's own browser downloads are
never used. Without Chromium or Playwright these tests skip with a loud reason,
except where ``CI`` is set or ``PREDICTOR_REQUIRE_BROWSER=1``: there they fail.

The server runs on a non-default ``REST_ENTRY_POINT``, so the page must use the
path the server gives it. Every request the page makes is recorded, and every
test checks that none left the server's own origin. Screenshots go to
``test-artifacts/page/``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from predictor.config import SHIPPED_MODEL_PREFIX
from predictor.data.strokes import DIGIT_TEMPLATES
from predictor.training.detection_metrics import iou_matrix
from tests.support.jpegs import with_exif_orientation
from tests.support.server_process import ServerProcess

from .conftest import ARTIFACTS, REPO_ROOT, SMALL_EDGE, encode_jpeg, known_objects, scene

try:
    from playwright.sync_api import BrowserContext, Page, Playwright, Request, sync_playwright

    PLAYWRIGHT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - depends on the machine
    PLAYWRIGHT_ERROR = f"the Python package playwright is not installed ({exc})"

CHROMIUM = Path(os.environ.get("PREDICTOR_CHROMIUM", "/usr/bin/chromium"))
# A quiet, isolated browser: no sandbox (containers run it as root), no GPU, and
# none of Chromium's own background traffic to the internet.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = ARTIFACTS / "page"
ENTRY_POINT = "/api/detect"
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_IMAGE_PIXELS = 4_000_000
# What the page asks for (app.js REQUEST_THRESHOLD) and shows at first (PROBABILITY_MORE).
REQUEST_THRESHOLD = 0.05
DEFAULT_THRESHOLD = 0.5
TIMEOUT_MS = 60_000
PAD_SIZE = 400  # the drawing canvas's pixels (index.html)


# Chromium's DevTools protocol does not report request bodies read from a Blob or
# File, which is how the page uploads; so the tests watch fetch() in the page.
RECORD_UPLOADS = """
(() => {
    const sent = [];
    const fetch = window.fetch.bind(window);
    window.__uploads = sent;
    window.fetch = (input, init) => {
        if (init && init.body instanceof Blob) sent.push(init.body);
        return fetch(input, init);
    };
})();
"""


# The first eight bytes of an MXNet NDArray file (`mx.nd.save`, HybridBlock.export).
MXNET_PARAMS_MAGIC = (0x112).to_bytes(8, "little")


def _shipped_model_problem() -> str | None:
    """Why the trained shipped model is not on disk, or None when it is.

    Judged by the files themselves, not by git (the builder image has no .git):
    the params file exists, is an MXNet params file (not, say, a Git LFS
    pointer), and has the held-out evaluation that only training writes beside
    it (`make model`; an untrained stand-in from `export --random-init` has none).
    """
    prefix = REPO_ROOT / SHIPPED_MODEL_PREFIX
    params = Path(f"{prefix}-0000.params")
    evaluation = Path(f"{prefix}-evaluation.json")
    if not params.is_file():
        return f"{params} is missing"
    with params.open("rb") as file:
        head = file.read(len(MXNET_PARAMS_MAGIC))
    if head != MXNET_PARAMS_MAGIC:
        return f"{params} is not an MXNet params file (a Git LFS pointer?)"
    if not evaluation.is_file():
        return f"{evaluation} is missing: {params} is not the trained model (make model)"
    return None


@pytest.fixture
def trained_model() -> None:
    """Fails (in CI, in the builder image) or skips (elsewhere) without the trained model."""
    problem = _shipped_model_problem()
    if problem is None:
        return
    if _browser_required():
        pytest.fail(f"needs the trained shipped model: {problem}", pytrace=False)
    pytest.skip(f"needs the trained shipped model: {problem}")


needs_trained_model = pytest.mark.usefixtures("trained_model")


def _browser_missing() -> str | None:
    if PLAYWRIGHT_ERROR is not None:
        return PLAYWRIGHT_ERROR + "; install the dev extra: pip install -e '.[dev]'"
    if not os.access(CHROMIUM, os.X_OK):
        return (
            f"{CHROMIUM} is missing; install Debian's chromium package (`make browser`, or "
            "apt-get install chromium), or point PREDICTOR_CHROMIUM at a Chromium binary"
        )
    return None


def _browser_required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("PREDICTOR_REQUIRE_BROWSER") == "1"


@dataclass
class Server:
    """The running server and its base URL."""

    process: ServerProcess
    url: str

    def detect(self, body: bytes, threshold: float = REQUEST_THRESHOLD) -> list[dict[str, Any]]:
        """What the endpoint answers for ``body``, asked directly (not through the page)."""
        status, payload = self.process.request(f"{ENTRY_POINT}?threshold={threshold}", body)
        assert status == 200, payload
        prediction: list[dict[str, Any]] = payload["prediction"]
        return prediction


@dataclass
class Tab:
    """A page plus every request it made and every script error it raised."""

    page: Page
    server: Server
    requests: list[Request] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, kind: str, text: str) -> None:
        """Keep console errors, except the browser's note on each HTTP error answer:
        the detection endpoint's are expected in some tests, the rest are caught
        by `responded`."""
        if kind == "error" and not text.startswith("Failed to load resource: the server"):
            self.errors.append(text)

    def responded(self, request: Request, status: int) -> None:
        """Every file the page loads must load."""
        if request.method == "GET" and status >= 400:
            self.errors.append(f"GET {request.url}: {status}")

    def detection_requests(self) -> list[Request]:
        """The POSTs to the detection endpoint so far."""
        return [r for r in self.requests if r.method == "POST" and ENTRY_POINT in r.url]

    def last_upload(self) -> bytes:
        """The bytes of the last image the page sent."""
        data_url: str = self.page.evaluate(
            """() => new Promise((resolve, reject) => {
                const reader = new FileReader();
                reader.onload = () => resolve(reader.result);
                reader.onerror = () => reject(reader.error);
                reader.readAsDataURL(window.__uploads.at(-1));
            })"""
        )
        return base64.b64decode(data_url.split(",", 1)[1])

    def screenshot(self, name: str) -> None:
        """Save a full-page screenshot as a test artefact."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {
        "MODEL_PREFIX": str(REPO_ROOT / SHIPPED_MODEL_PREFIX),
        "MODEL_EDGE": str(SMALL_EDGE),
        "REST_ENTRY_POINT": ENTRY_POINT,
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "PROBABILITY_MORE": str(DEFAULT_THRESHOLD),
        "PREPROCESS_WORKERS": "2",
    }
    with ServerProcess(env) as process:
        yield Server(process, process.url)


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserContext]:
    missing = _browser_missing()
    if missing is not None:
        message = f"BROWSER TESTS NOT RUN: {missing}"
        if _browser_required():
            pytest.fail(message + " (required here: CI or PREDICTOR_REQUIRE_BROWSER=1 is set)")
        pytest.skip(message)
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # only this run's pictures
    with (
        tempfile.TemporaryDirectory(prefix="predictor-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = _launch(playwright, profile)
        try:
            yield context
        finally:
            context.close()


def _launch(playwright: Playwright, profile: str) -> BrowserContext:
    # A persistent context is how Playwright takes an (empty) --user-data-dir.
    context = playwright.chromium.launch_persistent_context(
        profile,
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_FLAGS,
        viewport={"width": 1280, "height": 900},
    )
    context.set_default_timeout(TIMEOUT_MS)
    return context


@pytest.fixture
def tab(browser: BrowserContext, server: Server) -> Iterator[Tab]:
    page = browser.new_page()
    current = Tab(page, server)
    page.on("request", lambda request: current.requests.append(request))
    page.on("pageerror", lambda error: current.errors.append(str(error)))
    page.add_init_script(RECORD_UPLOADS)
    page.on("console", lambda message: current.console(message.type, message.text))
    page.on("response", lambda response: current.responded(response.request, response.status))
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=ready]")
    try:
        yield current
    finally:
        page.close()
    elsewhere = [
        r.url
        for r in current.requests
        if not r.url.startswith((server.url + "/", "blob:" + server.url + "/", "data:"))
    ]
    assert elsewhere == [], "the page fetched from outside its own server"
    assert current.errors == [], "script errors, or failed loads of the page's own files"


# ------------------------------------------------------------------ helpers


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def settle(page: Page) -> str:
    """Wait until the page has an answer (or an error) and return which."""
    page.wait_for_selector("body:is([data-state=done], [data-state=error])")
    state = page.get_attribute("body", "data-state")
    assert state is not None
    return state


@dataclass(frozen=True)
class Sent:
    """One detection request the page made."""

    url: str
    body: bytes


def submit(tab: Tab, action: Callable[[], None]) -> Sent:
    """Run ``action``, which makes the page send one image; wait for the result."""
    before = len(tab.detection_requests())
    with tab.page.expect_response(lambda r: ENTRY_POINT in r.url):
        action()
    settle(tab.page)
    sent = tab.detection_requests()[before:]
    assert len(sent) == 1, [r.url for r in sent]
    return Sent(sent[0].url, tab.last_upload())


def upload(tab: Tab, path: Path) -> Sent:
    """Choose ``path`` in the file input; return the detection request it made."""
    return submit(tab, lambda: tab.page.set_input_files("#file-input", str(path)))


def listed(page: Page) -> list[dict[str, Any]]:
    """The rows of the detection list."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "#detections tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return [
        {
            "objectClass": cells[0],
            "probability": cells[1],
            "x": int(cells[2]),
            "y": int(cells[3]),
            "width": int(cells[4]),
            "height": int(cells[5]),
        }
        for cells in rows
    ]


def box_count(page: Page) -> int:
    return page.locator("#boxes .box").count()


def fixed(value: float, places: int) -> str:
    """``value.toFixed(places)`` as JavaScript writes it (exact value, ties away from zero)."""
    exact = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return f"{exact:.{places}f}"


def as_listed(detections: Sequence[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """``detections`` as the list shows them: above ``threshold``, probability to 3 places."""
    return [
        {**d, "probability": fixed(d["probability"], 3)}
        for d in detections
        if d["probability"] > threshold
    ]


def set_threshold(page: Page, value: float) -> None:
    page.fill("#threshold", str(value))


def decode(body: bytes) -> np.ndarray[Any, np.dtype[np.uint8]]:
    assert body[:2] == b"\xff\xd8", "the page must send a JPEG"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return np.asarray(image, dtype=np.uint8)


def put_file(page: Page, event: str, data: bytes, name: str, mime: str) -> None:
    """Dispatch a paste (on the document) or a drop (on the drop zone) carrying a file."""
    page.evaluate(
        """([event, b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            if (event === "paste") {
                document.dispatchEvent(new ClipboardEvent("paste", {
                    clipboardData: transfer, bubbles: true, cancelable: true }));
            } else {
                const zone = document.getElementById("drop-zone");
                for (const type of ["dragenter", "dragover", "drop"]) {
                    zone.dispatchEvent(new DragEvent(type, {
                        dataTransfer: transfer, bubbles: true, cancelable: true }));
                }
            }
        }""",
        [event, base64.b64encode(data).decode("ascii"), name, mime],
    )


def pad_point(page: Page, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of pad pixel (x, y)."""
    box = page.locator("#pad").bounding_box()
    assert box is not None
    return box["x"] + x * box["width"] / PAD_SIZE, box["y"] + y * box["height"] / PAD_SIZE


def draw_with_mouse(page: Page, strokes: Sequence[Sequence[tuple[float, float]]]) -> None:
    """Draw polylines given in pad pixels with synthetic mouse events."""
    for stroke in strokes:
        page.mouse.move(*pad_point(page, *stroke[0]))
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*pad_point(page, *point), steps=4)
        page.mouse.up()


def digit_strokes(digit: str, variant: int = 0) -> list[list[tuple[float, float]]]:
    """A training template of ``digit`` in pad pixels, as large as a person would draw it."""
    height, width = 0.7 * PAD_SIZE, 0.45 * PAD_SIZE
    left, top = (PAD_SIZE - width) / 2, (PAD_SIZE - height) / 2
    return [
        [(left + float(x) * width, top + float(y) * height) for x, y in stroke]
        for stroke in DIGIT_TEMPLATES[digit][variant]
    ]


def pad_pixels(page: Page) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """The pad's pixels as a grey image."""
    data: list[int] = page.evaluate(
        """() => {
            const pad = document.getElementById("pad");
            const d = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
            return Array.from(d.filter((_, i) => i % 4 === 0));
        }"""
    )
    return np.asarray(data, dtype=np.uint8).reshape(PAD_SIZE, PAD_SIZE)


def iou(a: dict[str, Any], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of a drawn box (x, y, width, height) and a corner box."""
    corners = (a["x"], a["y"], a["x"] + a["width"], a["y"] + a["height"])
    return float(iou_matrix([corners], [b])[0, 0])


# ------------------------------------------------------------------ the page itself


def test_page_loads_with_its_settings_and_only_from_its_server(tab: Tab) -> None:
    page = tab.page
    response = page.request.get(tab.server.url + "/")
    assert "default-src 'none'" in response.headers["content-security-policy"]
    config = json.loads(page.text_content("#predictor-config") or "")
    assert config["entryPoint"] == ENTRY_POINT
    assert config["modelEdge"] == SMALL_EDGE
    loaded = {r.url.removeprefix(tab.server.url) for r in tab.requests}
    assert {"/", "/static/app.js", "/static/style.css"} <= loaded
    # Every control has a label a screen reader (and Playwright) can find it by.
    for label in ("Choose an image", "Minimum confidence"):
        assert page.get_by_label(label).count() == 1, label
    for name in ("Photo or image file", "Draw"):
        assert page.get_by_role("radio", name=name).count() == 1, name
    assert page.input_value("#threshold") == str(DEFAULT_THRESHOLD)
    assert "circle" in (page.text_content("#classes-line") or "")
    tab.screenshot("01-loaded")


def test_upload_shows_boxes_and_list_in_original_pixels(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    jpeg = encode_jpeg(scene(1, 800, 600))
    with page.expect_response(lambda r: ENTRY_POINT in r.url) as answer:
        request = upload(tab, write(tmp_path, "scene.jpg", jpeg))
    assert settle(page) == "done"
    # Short side 600 = 2 model edges: sent untouched, with a low threshold.
    assert request.body == jpeg
    assert f"threshold={REQUEST_THRESHOLD}" in request.url
    expected = tab.server.detect(jpeg)
    shown = listed(page)
    assert shown == as_listed(expected, DEFAULT_THRESHOLD)
    assert shown, "the stand-in network finds plenty above 0.5"
    assert box_count(page) == len(shown)

    # Each box sits where its pixels are, at the displayed scale, labelled; the
    # most confident is drawn last (on top).
    image = page.locator("#photo").bounding_box()
    assert image is not None
    scale = image["width"] / 800
    boxes: list[list[Any]] = page.eval_on_selector_all(
        "#boxes .box",
        """boxes => boxes.map(b => {
            const r = b.getBoundingClientRect();
            return [r.x, r.y, r.width, r.height, b.textContent];
        })""",
    )
    above = [d for d in expected if d["probability"] > DEFAULT_THRESHOLD]
    for (x, y, width, height, label), d in zip(boxes, reversed(above), strict=True):
        assert x - image["x"] == pytest.approx(d["x"] * scale, abs=1.0)
        assert y - image["y"] == pytest.approx(d["y"] * scale, abs=1.0)
        assert width == pytest.approx(d["width"] * scale, abs=1.0)
        assert height == pytest.approx(d["height"] * scale, abs=1.0)
        assert label == f"{d['objectClass']} {fixed(d['probability'], 2)}"

    # The server's own processing time, from its Server-Timing header.
    header = answer.value.headers["server-timing"]
    total_ms = float(re.findall(r"total;dur=([\d.]+)", header)[0])
    timing = page.text_content("#timing") or ""
    assert timing.startswith("Server time "), timing
    assert "round trip" in timing
    assert float(page.get_attribute("#timing", "data-server-ms") or "nan") == total_ms
    tab.screenshot("02-upload")


def test_slider_refilters_instantly_without_asking_again(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    jpeg = encode_jpeg(scene(3, 640, 480))
    upload(tab, write(tmp_path, "scene.jpg", jpeg))
    probabilities = [d["probability"] for d in tab.server.detect(jpeg)]
    requests_before = len(tab.requests)
    # Slider positions (steps of 0.01) spread over what this network answers.
    quantiles = np.quantile(probabilities, [0.0, 0.25, 0.5, 0.75, 0.95])
    thresholds = sorted({REQUEST_THRESHOLD, *(math.floor(q * 100) / 100 for q in quantiles), 1.0})
    counts = []
    for threshold in thresholds:
        set_threshold(page, threshold)
        assert float(page.input_value("#threshold")) == pytest.approx(threshold)
        # No waiting: the list and boxes change in the slider's own input event.
        rows, boxes = len(listed(page)), box_count(page)
        expected = sum(p > threshold for p in probabilities)
        assert rows == boxes == expected, (threshold, rows, boxes, expected)
        assert page.text_content("#threshold-value") == f"{threshold:.2f}"
        counts.append(rows)
        if threshold == thresholds[-3]:
            tab.screenshot("03-slider")
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > counts[-1] == 0
    assert len(set(counts)) >= 3, counts
    # The keyboard moves it too.
    page.focus("#threshold")
    page.keyboard.press("Home")
    assert len(listed(page)) == len(probabilities)
    page.keyboard.press("End")
    assert len(listed(page)) == 0
    assert "0 of" in (page.text_content("#status") or "")
    assert len(tab.requests) == requests_before, "moving the slider made a request"


def test_large_photo_is_shrunk_before_upload_and_boxes_scaled_back(
    tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    request = upload(tab, write(tmp_path, "large.jpg", encode_jpeg(scene(4, 2400, 1800))))
    sent = decode(request.body)
    # Shrunk to a shorter side of 2 model edges, never less.
    assert sent.shape[:2] == (2 * SMALL_EDGE, 800)
    expected = [
        {**d, "x": 3 * d["x"], "y": 3 * d["y"], "width": 3 * d["width"], "height": 3 * d["height"]}
        for d in tab.server.detect(request.body)
    ]
    set_threshold(page, REQUEST_THRESHOLD)
    assert listed(page) == as_listed(expected, REQUEST_THRESHOLD)
    times = "\N{MULTIPLICATION SIGN}"
    assert f"sent at 800{times}600 of 2400{times}1800" in (page.text_content("#timing") or "")
    tab.screenshot("04-large-photo")


def test_exif_rotated_photo_is_shown_and_measured_upright(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    # Stored 640x480, displayed 480x640 (orientation 6: turn 90 degrees clockwise).
    jpeg = with_exif_orientation(encode_jpeg(scene(5, 640, 480)), 6)
    request = upload(tab, write(tmp_path, "rotated.jpg", jpeg))
    assert request.body == jpeg
    assert page.evaluate("document.getElementById('photo').naturalWidth") == 480
    set_threshold(page, REQUEST_THRESHOLD)
    shown = listed(page)
    assert shown == as_listed(tab.server.detect(jpeg), REQUEST_THRESHOLD)
    assert all(d["x"] + d["width"] <= 480 and d["y"] + d["height"] <= 640 for d in shown)


def test_paste_and_drop_send_the_image(tab: Tab) -> None:
    page = tab.page
    image = scene(6, 640, 480)
    ok, png = cv2.imencode(".png", image)
    assert ok
    request = submit(tab, lambda: put_file(page, "paste", png.tobytes(), "", "image/png"))
    sent = decode(request.body)  # converted to JPEG in the page, same size
    assert sent.shape[:2] == (480, 640)
    assert np.abs(sent.astype(int) - image.astype(int)).mean() < 8
    assert listed(page), "a pasted image gets a result"

    jpeg = encode_jpeg(scene(7, 640, 480))
    request = submit(tab, lambda: put_file(page, "drop", jpeg, "dropped.jpg", "image/jpeg"))
    assert request.body == jpeg
    assert listed(page) == as_listed(tab.server.detect(jpeg), DEFAULT_THRESHOLD)
    tab.screenshot("05-dropped")


def test_drawing_with_mouse_and_finger_is_sent_as_jpeg(tab: Tab, browser: BrowserContext) -> None:
    page = tab.page
    page.get_by_role("radio", name="Draw").check()
    detect = page.get_by_role("button", name="Detect")
    assert detect.is_disabled(), "nothing to detect on an empty pad"
    strokes = digit_strokes("7")
    draw_with_mouse(page, strokes)
    # A finger: real touch input through the DevTools protocol, turned into
    # pointer events by the browser as a phone's would be.
    cdp = browser.new_cdp_session(page)
    start, end = pad_point(page, 60, 360), pad_point(page, 140, 360)
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [_xy(start)]})
    for k in range(1, 11):
        x = start[0] + (end[0] - start[0]) * k / 10
        cdp.send(
            "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [_xy((x, end[1]))]}
        )
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()
    pixels = pad_pixels(page)
    assert pixels[360, 100] < 64, "the finger stroke is on the pad"
    assert detect.is_enabled()

    request = submit(tab, detect.click)
    sent = decode(request.body)
    assert sent.shape[:2] == (PAD_SIZE, PAD_SIZE)
    grey = cv2.cvtColor(sent, cv2.COLOR_BGR2GRAY)
    x, y = (round(v) for v in strokes[0][0])
    assert grey[y, x] < 64, "the pen stroke is in the JPEG"
    assert grey[5, 395] > 220 and grey[395, 395] > 220, "the background stays white"
    assert settle(page) == "done"
    # The drawn 7 at least (the finger's stroke is no digit), in the page's own wording.
    status = page.text_content("#status") or ""
    assert re.fullmatch(r"[1-9]\d* of [1-9]\d* detections? above 0\.50\.", status), status
    tab.screenshot("06-drawing")

    page.get_by_role("button", name="Clear").click()
    assert int(pad_pixels(page).min()) == 255
    assert detect.is_disabled()


def is_detection(url: str) -> bool:
    return ENTRY_POINT in url


def _xy(point: tuple[float, float]) -> dict[str, float]:
    return {"x": point[0], "y": point[1]}


# ------------------------------------------------------------------ errors


def test_unsupported_file_is_explained_without_a_request(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    page.set_input_files("#file-input", str(write(tmp_path, "notes.txt", b"not an image")))
    assert settle(page) == "error"
    message = page.text_content("#error-message") or ""
    assert message.startswith("Unsupported file: “notes.txt” is not an image"), message
    assert tab.detection_requests() == []
    tab.screenshot("07-unsupported")


def test_too_large_answers_are_explained(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    # Too many bytes: noise compresses badly. 600 px wide, so the page sends it as it is.
    noise = np.random.default_rng(0).integers(0, 256, (2400, 600, 3), dtype=np.uint8)
    heavy = encode_jpeg(noise, quality=100)
    assert len(heavy) > MAX_BODY_BYTES
    upload(tab, write(tmp_path, "noise.jpg", heavy))
    message = page.text_content("#error-message") or ""
    assert message.startswith(
        f"The image is too large for the server: the body is larger than {MAX_BODY_BYTES} bytes"
    ), message
    assert "the server accepts up to 2.1 MB" in message
    assert box_count(page) == 0 and page.is_hidden("#detections")

    # Too many pixels (read from the JPEG header by the server).
    tall = encode_jpeg(np.full((8000, 600, 3), 200, np.uint8))
    upload(tab, write(tmp_path, "tall.jpg", tall))
    message = page.text_content("#error-message") or ""
    assert message.startswith("The image is too large for the server: image is 600x8000"), message
    tab.screenshot("08-too-large")


def test_busy_and_rejected_answers_are_explained(tab: Tab, tmp_path: Path) -> None:
    """The server's 503 and 400 answers, as it sends them, reach the page's messages.

    A real server cannot be made busy on cue from a browser, so these answers
    are played back by the browser itself; their shape is the one the server
    sends (tests/test_server.py checks that side).
    """
    page = tab.page
    answer: dict[str, Any] = {
        "status": 503,
        "headers": {"Retry-After": "2"},
        "error": "the queue is full (64 images waiting)",
    }

    def fake(route: Any) -> None:
        route.fulfill(
            status=answer["status"],
            headers={**answer["headers"], "Content-Type": "application/json"},
            body=json.dumps({"error": answer["error"]}),
        )

    page.route(is_detection, fake)
    path = write(tmp_path, "scene.jpg", encode_jpeg(scene(8, 640, 480)))
    upload(tab, path)
    assert page.text_content("#error-message") == (
        "The server is busy (the queue is full (64 images waiting)). Try again in 2 seconds."
    )
    retry = page.get_by_role("button", name="Try again")
    assert retry.is_visible()
    tab.screenshot("09-busy")

    answer.update(status=400, headers={}, error="corrupt JPEG header (expected a marker)")
    upload(tab, path)
    assert page.text_content("#error-message") == (
        "The server could not use this image: corrupt JPEG header (expected a marker)."
    )
    assert retry.is_hidden()

    # Once the server answers again, "Try again" (after a 503) gets the result.
    answer.update(status=503, headers={"Retry-After": "1"}, error="the server is shutting down")
    upload(tab, path)
    assert "Try again in 1 second." in (page.text_content("#error-message") or "")
    page.unroute(is_detection)
    submit(tab, retry.click)
    assert settle(page) == "done"
    assert page.is_hidden("#error")
    assert listed(page)


# ------------------------------------------------------------------ a server with an API key

API_KEY = "page-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[Server]:
    env = {
        "MODEL_PREFIX": str(REPO_ROOT / SHIPPED_MODEL_PREFIX),
        "MODEL_EDGE": str(SMALL_EDGE),
        "REST_ENTRY_POINT": ENTRY_POINT,
        "PREPROCESS_WORKERS": "2",
        "API_KEY": API_KEY,
    }
    with ServerProcess(env) as process:
        yield Server(process, process.url)


def open_tab(browser: BrowserContext, server: Server) -> Tab:
    """A new tab on ``server``'s page, watched like the `tab` fixture's; close its page after."""
    page = browser.new_page()
    tab = Tab(page, server)
    page.on("request", lambda request: tab.requests.append(request))
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", lambda message: tab.console(message.type, message.text))
    page.add_init_script(RECORD_UPLOADS)
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-state=ready]")
    return tab


def test_the_page_asks_for_the_api_key_and_sends_it(
    browser: BrowserContext, keyed_server: Server, tmp_path: Path
) -> None:
    tab = open_tab(browser, keyed_server)
    page = tab.page
    try:
        assert API_KEY not in page.content(), "the key is never part of the page"
        key_field = page.get_by_label("API key")
        assert key_field.is_visible()
        # Without the key: the server's 401, explained, and a way to try again.
        jpeg = encode_jpeg(scene(11, 640, 480))
        path = write(tmp_path, "scene.jpg", jpeg)
        upload(tab, path)
        message = page.text_content("#error-message") or ""
        assert message.startswith("The server refused the API key (none entered)"), message
        retry = page.get_by_role("button", name="Try again")
        assert retry.is_visible()
        tab.screenshot("14-api-key-missing")
        # With it: the detection goes through, with the key as the Bearer token.
        key_field.fill(API_KEY)
        request = submit(tab, retry.click)
        assert request.body == jpeg
        sent = tab.detection_requests()[-1]
        assert sent.all_headers()["authorization"] == f"Bearer {API_KEY}"
        status, payload = keyed_server.process.request(
            f"{ENTRY_POINT}?threshold={REQUEST_THRESHOLD}",
            jpeg,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert status == 200
        set_threshold(page, REQUEST_THRESHOLD)
        assert listed(page) == as_listed(payload["prediction"], REQUEST_THRESHOLD)
        tab.screenshot("15-api-key-accepted")
        # The tab remembers it across a reload (sessionStorage), and nothing else does.
        page.reload()
        page.wait_for_selector("body[data-state=ready]")
        assert page.get_by_label("API key").input_value() == API_KEY
        assert page.evaluate("localStorage.length") == 0
    finally:
        page.close()
    assert tab.errors == [], tab.errors


def test_without_a_key_setting_the_page_shows_no_key_field(tab: Tab) -> None:
    assert tab.page.is_hidden("#key-panel")


# ------------------------------------------------------------------ small screens


def test_phone_width_needs_no_sideways_scrolling(tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    page.set_viewport_size({"width": 390, "height": 844})
    upload(tab, write(tmp_path, "scene.jpg", encode_jpeg(scene(9, 1200, 900))))
    assert settle(page) == "done"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide on a 390 px screen"
    photo = page.locator("#photo").bounding_box()
    assert photo is not None and photo["width"] <= 390
    overflow = page.eval_on_selector(".table-wrap", "w => w.scrollWidth - w.clientWidth")
    assert overflow == 0, "the list needs sideways scrolling on a phone"
    tab.screenshot("10-phone")
    page.get_by_role("radio", name="Draw").check()
    pad = page.locator("#pad").bounding_box()
    assert pad is not None and 300 <= pad["width"] <= 390
    page.locator("#pad").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "11-phone-draw.png"))


# ------------------------------------------------------------------ with the trained model


@needs_trained_model
def test_fixture_objects_are_found_and_listed(tab: Tab, tmp_path: Path) -> None:
    fixture = known_objects()
    upload(tab, write(tmp_path, "fixture.jpg", encode_jpeg(fixture.image, quality=92)))
    shown = listed(tab.page)  # at the default threshold
    tab.screenshot("12-fixture-trained")
    assert sorted(d["objectClass"] for d in shown) == ["3", "7", "circle"], shown[:10]
    for obj in fixture.objects:
        (match,) = [d for d in shown if d["objectClass"] == obj.label]
        assert iou(match, obj.box.as_tuple()) >= 0.5, (obj.label, match, obj.box.as_tuple())


@needs_trained_model
@pytest.mark.parametrize("digit", ["7", "3"])
def test_drawn_digit_is_detected(tab: Tab, digit: str) -> None:
    page = tab.page
    page.get_by_role("radio", name="Draw").check()
    draw_with_mouse(page, digit_strokes(digit))
    submit(tab, page.get_by_role("button", name="Detect").click)
    shown = listed(page)
    tab.screenshot(f"13-drawn-{digit}-trained")
    assert shown and shown[0]["objectClass"] == digit, shown[:5]
