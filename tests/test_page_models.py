"""The page on a server with several models: a model picker, and the pad on the digits model."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from predictor.config import SHIPPED_MODEL_PREFIX
from predictor.export import export_zoo
from tests.support.server_process import ServerProcess

from .conftest import REPO_ROOT, encode_jpeg, scene
from .test_page import (
    ENTRY_POINT,
    RECORD_UPLOADS,
    REQUEST_THRESHOLD,
    Server,
    Tab,
    browser,  # noqa: F401 (the fixture, shared with the page's other tests)
    listed,
    set_threshold,
    upload,
    write,
)

FRUIT = ["apple", "pear", "plum"]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    fruit = tmp_path_factory.mktemp("fruit") / "fruit"
    export_zoo(
        "ssd_300_mobilenet0.25_custom",
        fruit,
        random_init=True,
        classes=FRUIT,
        stream=io.StringIO(),
    )
    env = {
        "MODELS": f"fruit={fruit},digits={REPO_ROOT / SHIPPED_MODEL_PREFIX}",
        "REST_ENTRY_POINT": ENTRY_POINT,
        "PREPROCESS_WORKERS": "2",
    }
    with ServerProcess(env) as process:
        yield Server(process, process.url)


def test_the_model_picker_sends_the_chosen_model_and_the_pad_uses_digits(
    browser: BrowserContext,  # noqa: F811
    two_models: Server,
    tmp_path: Path,
) -> None:
    page = browser.new_page()
    tab = Tab(page, two_models)
    page.on("request", lambda request: tab.requests.append(request))
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    page.on("console", lambda message: tab.console(message.type, message.text))
    page.add_init_script(RECORD_UPLOADS)
    try:
        page.goto(two_models.url + "/")
        page.wait_for_selector("body[data-state=ready]")
        picker = page.get_by_label("Model")
        assert picker.is_visible()
        assert picker.input_value() == "fruit", "the default model, the first of MODELS"
        assert page.locator("#model option").all_text_contents() == ["fruit", "digits"]
        assert "apple" in (page.text_content("#classes-line") or "")

        jpeg = encode_jpeg(scene(5, 640, 480))
        request = upload(tab, write(tmp_path, "scene.jpg", jpeg))
        assert "model=fruit" in request.url
        set_threshold(page, REQUEST_THRESHOLD)
        assert {d["objectClass"] for d in listed(page)} <= set(FRUIT)
        tab.screenshot("16-models-fruit")

        # Another model: the same image is asked again, of that model.
        with page.expect_request(lambda r: ENTRY_POINT in r.url) as asked:
            picker.select_option("digits")
        assert "model=digits" in asked.value.url
        page.wait_for_selector("body[data-state=done]")
        status, payload = two_models.process.request(
            f"{ENTRY_POINT}?threshold={REQUEST_THRESHOLD}&model=digits", jpeg
        )
        assert status == 200
        assert [d["objectClass"] for d in listed(page)] == [
            d["objectClass"] for d in payload["prediction"]
        ]
        assert "circle" in (page.text_content("#classes-line") or "")
        tab.screenshot("17-models-digits")

        # The drawing pad is for digits and shapes: it switches to that model.
        picker.select_option("fruit")
        page.wait_for_selector("body[data-state=done]")
        page.get_by_role("radio", name="Draw").check()
        assert picker.input_value() == "digits"
    finally:
        page.close()
    assert tab.errors == [], tab.errors
