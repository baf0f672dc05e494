"""The page on a server with several models: a model picker, and the pad on the digits model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from predictor.config import SHIPPED_MODEL_PREFIX
from tests.support.server_process import ServerProcess

from .conftest import FRUIT_CLASSES, REPO_ROOT, encode_jpeg, scene
from .test_page import (
    ENTRY_POINT,
    REQUEST_THRESHOLD,
    Server,
    browser,  # noqa: F401 (the fixture, shared with the page's other tests)
    listed,
    open_tab,
    set_threshold,
    upload,
    write,
)

FRUIT = FRUIT_CLASSES


@pytest.fixture(scope="module")
def two_models(fruit_prefix: Path) -> Iterator[Server]:
    env = {
        "MODELS": f"fruit={fruit_prefix},digits={REPO_ROOT / SHIPPED_MODEL_PREFIX}",
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
    tab = open_tab(browser, two_models)
    page = tab.page
    try:
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
