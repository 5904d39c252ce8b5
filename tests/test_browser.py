"""The drawing page in a real browser: headless Chromium (Debian's) driven by Playwright.

A digit is drawn with mouse moves; the page must show the 28x28 image and, for each model,
bars that sum to 1 and the digit that /api/predict gives for the same canvas PNG. Models are
untrained, so the check is exact agreement, not recognition. Screenshots go to
test-artifacts/. Skips without Chromium (`make browser`) or the playwright package.
"""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from synthetic import drawn_test_set, save_model

from mnistlab.server import load_served_models

TEST_IMAGES, TEST_LABELS = drawn_test_set()
CHROMIUM = Path(os.environ.get("MNISTLAB_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make browser)")
if not CHROMIUM.exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs Debian's)", allow_module_level=True)

# A "7" as mouse positions in the pad's unit square.
SEVEN = [(0.3, 0.22), (0.7, 0.22), (0.58, 0.45), (0.45, 0.8)]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:  # Playwright gives it a new, empty profile
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser):
    """open_page(port) -> a page on the server, which fails the test on any script error (but
    `expected_error`) or any request that leaves the server (the page must work offline)."""
    pages, problems = [], []

    def open_(port: int, expected_error: str | None = None):
        page = browser.new_page(viewport={"width": 1100, "height": 760})

        def on_console(message):
            if message.type == "error" and not (expected_error and expected_error in message.text):
                problems.append(f"console: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        own = f"http://127.0.0.1:{port}/"

        def only_own(route):
            if route.request.url.startswith(own) or route.request.url.startswith("data:"):
                route.continue_()
            else:
                problems.append(f"request outside the server: {route.request.url}")
                route.abort()

        page.route("**/*", only_own)
        page.goto(own)
        pages.append(page)
        return page

    yield open_
    for page in pages:
        page.close()
    assert not problems


def draw(page, points):
    box = page.locator("#pad").bounding_box()
    x, y = (box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.move(x, y)
    page.mouse.down()
    for px, py in points[1:]:
        page.mouse.move(box["x"] + px * box["width"], box["y"] + py * box["height"], steps=12)
    page.mouse.up()


def shown(page) -> dict:
    """What the page shows: per model its digit and bar probabilities, and the 28x28 image."""
    return page.evaluate("""() => ({
        models: [...document.querySelectorAll('.model')].map(card => ({
            name: card.dataset.name,
            digit: card.querySelector('.digit').textContent,
            top: [...card.querySelectorAll('.bar-row')].findIndex(row => row.classList.contains('top')),
            probabilities: [...card.querySelectorAll('.bar')].map(bar => Number(bar.dataset.probability)),
        })),
        seen: Array.from(document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data)
            .filter((_, i) => i % 4 === 0),
    })""")


def wait_for_answers(page, count: int):
    page.wait_for_function(
        f"() => document.querySelectorAll('.model[data-state=answered]').length === {count}", timeout=10_000
    )


def post_json(port, path, payload):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return load_served_models([save_model(root / "lenet5-s0", "lenet5"), save_model(root / "mlp-s0", "mlp")])


def test_drawn_digit_gets_the_api_answer_for_the_same_canvas(open_page, models, running):
    ARTIFACTS.mkdir(exist_ok=True)
    with running(models) as port:
        page = open_page(port)
        page.wait_for_selector(".model >> nth=1")
        assert page.locator(".model .model-meta").first.inner_text().startswith("lenet5 · 44,426 parameters")

        draw(page, SEVEN)
        wait_for_answers(page, 2)
        page.screenshot(path=ARTIFACTS / "serve-drawn-digit.png", full_page=True)
        result = shown(page)

        png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        answer = post_json(port, "/api/predict", {"image": png})
        seen = np.array(result["seen"]).reshape(28, 28)
        assert seen.tolist() == answer["preprocessed"] and seen.sum() > 20 * 255
        ys, xs = np.indices(seen.shape)
        assert abs((ys * seen).sum() / seen.sum() - 14) <= 1 and abs((xs * seen).sum() / seen.sum() - 14) <= 1
        assert [m["name"] for m in result["models"]] == ["lenet5-s0", "mlp-s0"]
        for on_page, from_api in zip(result["models"], answer["predictions"]):
            assert abs(sum(on_page["probabilities"]) - 1) < 1e-3
            assert int(on_page["digit"]) == from_api["digit"] == on_page["top"]
            assert np.allclose(on_page["probabilities"], from_api["probabilities"], atol=1e-6)

        page.click("#clear")
        cleared = shown(page)
        assert not any(cleared["seen"]) and all(m["digit"] == "\u2013" for m in cleared["models"])


def test_test_digit_button_shows_the_true_label(open_page, models, running):
    with running(models) as port:
        page = open_page(port)
        page.wait_for_selector(".model >> nth=1")
        page.click("#test-digit")
        wait_for_answers(page, 2)
        status = page.inner_text("#status")
        index, label = map(int, re.search(r"#(\d+): the true label is (\d)", status).groups())
        assert label == TEST_LABELS[index]
        assert np.array_equal(np.array(shown(page)["seen"]).reshape(28, 28), TEST_IMAGES[index])
        assert page.locator(".verdict").first.inner_text() in ("right", f"wrong (it is {label})")


def test_without_data_the_test_digit_button_says_so(open_page, models, running):
    def no_data():
        from mnistlab.errors import UserError

        raise UserError("the mnist test set is not prepared yet: run `mnistlab data` first")

    with running(models, test_set=no_data) as port:
        page = open_page(port, expected_error="503 (Service Unavailable)")  # the browser logs the failed fetch
        page.wait_for_selector(".model >> nth=1")
        page.click("#test-digit")
        page.wait_for_selector("#test-digit:disabled")
        assert "mnistlab data" in page.inner_text("#status")
        assert page.inner_text("#test-digit") == "No test digits"


def test_without_models_the_page_says_how_to_train_one(open_page, running):
    ARTIFACTS.mkdir(exist_ok=True)
    with running([]) as port:
        page = open_page(port)
        notice = page.wait_for_selector("#no-models:not([hidden])")
        assert "mnistlab train" in notice.inner_text() and "make run" in notice.inner_text()
        draw(page, SEVEN)  # the 28x28 image still shows, so the preprocessing can be explored
        page.wait_for_function("() => document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data.some((v, i) => i % 4 === 0 && v > 0)")
        page.screenshot(path=ARTIFACTS / "serve-no-models.png", full_page=True)


def test_screenshot_is_a_png():
    path = ARTIFACTS / "serve-drawn-digit.png"
    if not path.exists():
        pytest.skip("the drawing test did not run")
    assert base64.b64encode(path.read_bytes()[:8]) == base64.b64encode(b"\x89PNG\r\n\x1a\n")
