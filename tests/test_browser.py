"""The drawing page in a real browser: headless Chromium (Debian's) driven by Playwright.

A digit is drawn with mouse moves; the page must show the 28x28 image and, for each model,
bars that sum to 1 and the digit that /api/predict gives for the same canvas PNG, what happens
inside each network (the API's values), and new answers when the digit is moved with the
sliders; on a phone's screen the answers show under the pad without scrolling. Models are
untrained, so the check is exact agreement, not recognition. Screenshots (desktop and phone)
go to test-artifacts/. Skips without Chromium (`make browser`) or the playwright package.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from synthetic import drawn_test_set, save_model

from mnistlab.inside import decode
from mnistlab.server import load_served_models, study_summary

TEST_IMAGES, TEST_LABELS = drawn_test_set()
# one browser for the module: with parallel test processes, its tests all run in one
pytestmark = pytest.mark.xdist_group("browser")
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

    def open_(port: int, expected_error: str | None = None, viewport: dict | None = None):
        page = browser.new_page(viewport=viewport or {"width": 1100, "height": 760})

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
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
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
        assert (ARTIFACTS / "serve-drawn-digit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
        page.wait_for_function(
            "() => document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28)"
            ".data.some((v, i) => i % 4 === 0 && v > 0)"
        )
        page.screenshot(path=ARTIFACTS / "serve-no-models.png", full_page=True)


# --- inside the networks, moving the digit, phones -----------------------------------------------

LENET5_CHAIN = "1×28×28 → 6×24×24 → 6×12×12 → 16×8×8 → 16×4×4 → 256 → 120 → 84 → 10"


def inside_shown(page) -> list[dict]:
    """Per model's "inside" section: its title, shape chain, and per figure the sizes of its canvases."""
    return page.evaluate("""() => [...document.querySelectorAll('.inside')].map(section => ({
        name: section.dataset.name,
        title: section.querySelector('.inside-title').textContent,
        shapes: section.querySelector('.shapes').textContent,
        figures: Object.fromEntries([...section.querySelectorAll('.stage')].map(figure => [
            figure.dataset.layer || figure.classList[1],
            [...figure.querySelectorAll('canvas')].map(c => `${c.width}x${c.height}`)])),
    }))""")


def canvas_red(page, selector: str) -> list[int]:
    script = (
        f"() => {{ const c = document.querySelector({json.dumps(selector)});\n"
        "        return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((_, i) => i % 4 === 0); }"
    )
    return page.evaluate(script)


def wait_for_seen(page, pixels):
    """Until the 28x28 image on the page is `pixels` (the answer to the latest move has arrived)."""
    page.wait_for_function(
        """(expected) => Array.from(document.getElementById('seen').getContext('2d')
        .getImageData(0, 0, 28, 28).data).filter((_, i) => i % 4 === 0).every((v, i) => v === expected[i])""",
        arg=np.array(pixels).ravel().tolist(),
        timeout=10_000,
    )


def test_inside_each_network_and_moving_the_digit(open_page, models, running):
    ARTIFACTS.mkdir(exist_ok=True)
    with running(models) as port:
        page = open_page(port, viewport={"width": 1280, "height": 900})
        page.wait_for_selector(".model >> nth=1")
        assert "not there yet" in page.inner_text("#study")  # no study report for this server
        draw(page, SEVEN)
        wait_for_answers(page, 2)
        page.wait_for_selector(".inside[data-state=shown] >> nth=1")
        lenet, mlp = inside_shown(page)
        assert lenet["title"] == "Inside LeNet-5" and lenet["shapes"] == LENET5_CHAIN
        assert lenet["figures"] == {
            "filters": ["5x5"] * 6,
            "conv1": ["24x24"] * 6,
            "pool1": ["12x12"] * 6,
            "conv2": ["8x8"] * 16,
            "pool2": ["4x4"] * 16,
            "fc1": ["120x1"],
            "fc2": ["84x1"],
            "fc3": ["10x1"],
        }
        assert mlp["title"] == "Inside MLP 500-150" and mlp["shapes"] == "1×28×28 → 784 → 500 → 150 → 10"
        assert mlp["figures"] == {"fc1": ["50x10"], "fc2": ["150x1"], "fc3": ["10x1"], "units": ["28x28"] * 10}

        # The feature maps on the page are the API's values for the same canvas (black 0 to white at the layer's
        # largest).
        png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
        answer = post_json(port, "/api/predict?inside=1", {"image": png})
        conv1 = next(layer for layer in answer["predictions"][0]["inside"]["layers"] if layer["name"] == "conv1")
        values = decode(conv1["values"], conv1["shape"])
        for i in range(6):
            on_page = np.array(
                canvas_red(page, f".inside[data-name=lenet5-s0] [data-layer=conv1] canvas:nth-of-type({i + 1})")
            )
            assert np.abs(on_page - np.round(255 * values[i].ravel() / values.max())).max() <= 1
        assert values.max() > 0
        before = shown(page)

        # Move with the keyboard on the sliders: 4 px right, 15 degrees clockwise.
        page.focus("#move-dx")
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        page.focus("#move-angle")
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        assert (
            page.inner_text("#move-dx-text") == "4 px right" and page.inner_text("#move-angle-text") == "15° clockwise"
        )
        moved = post_json(port, "/api/predict?dx=4&angle=-15", {"image": png})
        wait_for_seen(page, moved["model_input"])
        wait_for_answers(page, 2)
        after = shown(page)
        for on_page, old, from_api in zip(after["models"], before["models"], moved["predictions"]):
            assert np.allclose(on_page["probabilities"], from_api["probabilities"], atol=1e-6)
            assert not np.allclose(on_page["probabilities"], old["probabilities"], atol=1e-4)  # the answers changed
        page.screenshot(path=ARTIFACTS / "serve-inside-desktop.png", full_page=True)

        page.click("#move-reset")
        wait_for_seen(page, answer["preprocessed"])
        page.wait_for_function("() => document.getElementById('move-dx-text').textContent === 'none'")
        back = shown(page)
        for on_page, old in zip(back["models"], before["models"]):
            assert np.allclose(on_page["probabilities"], old["probabilities"], atol=1e-6)


def test_on_a_phone_the_answers_show_under_the_pad_without_scrolling(open_page, models, running):
    ARTIFACTS.mkdir(exist_ok=True)
    with running(models) as port:
        page = open_page(port, viewport={"width": 390, "height": 844})
        page.wait_for_selector(".model >> nth=1")
        draw(page, SEVEN)
        wait_for_answers(page, 2)
        page.wait_for_selector("#answers li[data-state=answered] >> nth=1")
        assert page.evaluate("window.scrollY") == 0
        for row in page.locator("#answers li").all():
            box = row.bounding_box()
            assert 0 <= box["y"] and box["y"] + box["height"] <= 844 and box["x"] + box["width"] <= 390
        strip = page.evaluate(
            "[...document.querySelectorAll('#answers li')].map(r => [r.querySelector('.strip-name').textContent, "
            "r.querySelector('.strip-digit').textContent])"
        )
        assert strip == [
            ["LeNet-5", m["digit"]] if m["name"] == "lenet5-s0" else ["MLP 500-150", m["digit"]]
            for m in shown(page)["models"]
        ]
        page.screenshot(path=ARTIFACTS / "serve-phone.png")


def test_probabilities_have_enough_digits_and_the_top_three_are_listed(open_page, models, running):
    with running(models) as port:
        page = open_page(port)
        page.wait_for_selector(".model >> nth=1")
        cases = {
            0.9997: "99.97%",
            0.0003: "0.03%",
            0.5: "50.0%",
            0.123: "12.3%",
            0.99951: "99.95%",
            0.999999: "99.9999%",
            1.0: ">99.9999%",
            0.0: "<0.0001%",
            0.000012: "0.001%",
            0.004: "0.4%",
        }
        assert page.evaluate(f"[{', '.join(map(str, cases))}].map(formatPercent)") == list(cases.values())
        draw(page, SEVEN)
        wait_for_answers(page, 2)
        top3 = page.evaluate(
            "[...document.querySelectorAll('.model')]"
            ".map(card => [...card.querySelectorAll('.top3 li')].map(li => li.textContent))"
        )
        for listed, model in zip(top3, shown(page)["models"]):
            order = np.argsort(model["probabilities"], kind="stable")[::-1][:3]
            formatted = page.evaluate("(ps) => ps.map(formatPercent)", [model["probabilities"][i] for i in order])
            assert listed == [f"{digit} {text}" for digit, text in zip(order, formatted)]


def test_the_study_curves_sit_beside_the_controls_when_the_study_has_them(open_page, models, running, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "variants": {"lenet5": {"label": "LeNet-5"}, "mlp": {"label": "MLP 500-150"}},
                "claims": {
                    "robustness": {
                        "shift": {
                            "values": [0, 1, 2, 3, 4, 5, 6],
                            "accuracy": {
                                "lenet5": [0.99, 0.99, 0.98, 0.96, 0.9, 0.8, 0.7],
                                "mlp": [0.98, 0.95, 0.85, 0.7, 0.5, 0.35, 0.2],
                            },
                        },
                        "rotation": {
                            "values": [0, 10, 20, 30, 40],
                            "accuracy": {
                                "lenet5": {"mean": [0.99, 0.98, 0.95, 0.88, 0.75]},
                                "mlp": {"mean": [0.98, 0.96, 0.9, 0.8, 0.6]},
                            },
                        },
                    }
                },
            }
        )
    )
    with running(models, study=study_summary(results)) as port:
        page = open_page(port)
        page.wait_for_selector(".study-chart >> nth=1")
        charts = page.evaluate("""() => [...document.querySelectorAll('.study-chart')].map(f => ({
            kind: f.dataset.kind, lines: f.querySelectorAll('polyline').length,
            marker: Number(f.querySelector('.marker').getAttribute('x1')) }))""")
        assert [(c["kind"], c["lines"]) for c in charts] == [("shift", 2), ("rotation", 2)]
        assert page.locator("#study .legend li").all_inner_texts() == ["LeNet-5", "MLP 500-150"]
        page.focus("#move-dy")
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        marker = page.evaluate("Number(document.querySelector('.study-chart .marker').getAttribute('x1'))")
        assert marker > charts[0]["marker"]  # the shift chart marks 3 px now
