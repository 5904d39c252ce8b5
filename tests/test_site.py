"""`mnistlab site`: the folder it writes, what it refuses, and the page opened from disk in real
Chromium (Debian's, driven by Playwright; those tests skip without it), with no server running.

The page's answers are checked against Python's: the 28x28 image against `preprocess.to_mnist`
and `transform.move_images`, the logits against PyTorch for every model in the registry, one
unit's arithmetic against `inside.layer_outputs`. Models are untrained (random weights, batch
norms with statistics far from the identity): the checks are about arithmetic, not recognition.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import urllib.request
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import (
    drawn_test_set,
    make_arrays,
    save_model,
    save_registry_models,
    with_batch_norm_statistics,
)

from mnistlab import cli, site
from mnistlab.checkpoint import load_model, save_checkpoint
from mnistlab.errors import UserError
from mnistlab.inputs import predict_logits
from mnistlab.inside import layer_outputs
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import decode_image, to_mnist
from mnistlab.server import load_served_models
from mnistlab.transform import move_images

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SEVEN = [(0.3, 0.22), (0.7, 0.22), (0.58, 0.45), (0.45, 0.8)]  # mouse positions in the pad's unit square
RESULTS = {
    "finished": "2026-01-01 00:00 UTC",
    "variants": {"lenet5": {"label": "LeNet-5"}, "mlp": {"label": "MLP 500-150"}},
    "summary": {
        "lenet5": {"test_acc": {"mean": 0.99, "std": 0.001, "n": 3}},
        "mlp": {"test_acc": {"mean": 0.98, "std": 0.002, "n": 3}},
    },
    "claims": {
        "robustness": {
            "shift": {
                "values": [0, 2, 4, 6],
                "accuracy": {"lenet5": [0.99, 0.97, 0.9, 0.7], "mlp": [0.98, 0.85, 0.5, 0.2]},
            },
            "rotation": {"values": [0, 20, 40], "accuracy": {"lenet5": [0.99, 0.95, 0.75], "mlp": [0.98, 0.9, 0.6]}},
        }
    },
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A LeNet-5 with batch norm (statistics far from the identity) and the 500-150 MLP, as run directories."""
    root = tmp_path_factory.mktemp("runs")
    lenet = with_batch_norm_statistics("lenet5-bn", seed=1)
    save_checkpoint(
        root / "lenet5-bn-s1" / "checkpoint.pt",
        model_name="lenet5-bn",
        model_kwargs={},
        config={"model": "lenet5-bn", "dataset": "mnist"},
        epoch=1,
        metrics=[{"epoch": 1, "val_acc": 0.5}],
        model_state=lenet.state_dict(),
    )
    return {"lenet": root / "lenet5-bn-s1", "mlp": save_model(root / "mlp-s0", "mlp")}


@pytest.fixture
def study(tmp_path, monkeypatch) -> Path:
    """A working directory with a study: reports/mnist/results.json and one figure beside it."""
    (tmp_path / "reports" / "mnist").mkdir(parents=True)
    (tmp_path / "reports" / "mnist" / "results.json").write_text(json.dumps(RESULTS))
    (tmp_path / "reports" / "mnist" / "shift_rotation.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def read_site_data(out: Path) -> dict:
    text = (out / "site-data.js").read_text()
    prefix = "window.MNISTLAB_SITE = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix) : -2])


def build(out: Path, *models: Path) -> int:
    return cli.main(["site", str(out), "--models", *map(str, models)])


# --- the folder -----------------------------------------------------------------------------------


def test_site_holds_the_page_the_models_and_the_study(runs, study, capsys):
    out = study / "mysite"
    assert build(out, runs["lenet"], runs["mlp"]) == 0
    assert f"open {out / 'index.html'}" in capsys.readouterr().out
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        ".mnistlab-site",
        "index.html",
        "site-data.js",
        "static/app.js",
        "static/forward.js",
        "static/style.css",
        "study/shift_rotation.png",
    ]
    page = (out / "index.html").read_text()
    assert page.index('src="site-data.js"') < page.index('src="static/forward.js"') < page.index('src="static/app.js"')
    assert "http" not in page and "//" not in page.replace("<!doctype", "")  # nothing to fetch from elsewhere
    data = read_site_data(out)
    assert [m["name"] for m in data["models"]] == ["lenet5-bn-s1", "mlp-s0"]
    assert [layer["type"] for layer in data["models"][0]["layers"]] == [
        "conv2d",
        "batchnorm2d",
        "relu",
        "maxpool2d",
        "conv2d",
        "batchnorm2d",
        "relu",
        "maxpool2d",
        "flatten",
        "linear",
        "relu",
        "linear",
        "relu",
        "linear",
    ]
    assert str(study) not in (out / "site-data.js").read_text()  # the builder's folders stay private
    assert [arm["label"] for arm in data["study"]["summary"]] == ["LeNet-5", "MLP 500-150"]
    assert data["study"]["figures"] == ["study/shift_rotation.png"] and data["study"]["robustness"]["shift"]
    weight = load_model(runs["mlp"])[0].net[1].weight.detach().numpy()
    stored = np.frombuffer(base64.b64decode(data["models"][1]["layers"][1]["weight"]), dtype="<f4")
    assert np.array_equal(stored, weight.ravel())


def test_one_copy_of_the_front_end_serves_and_ships(runs, study, running):
    """The page's files exist once, in the package; the server serves them and the site copies them, byte for byte."""
    package = resources.files("mnistlab") / "static"
    source = Path(site.__file__).parent
    for name in site.PAGE_FILES:
        assert len(list(source.rglob(name))) == 1, f"more than one {name} in {source}"
    out = study / "mysite"
    assert build(out, runs["mlp"]) == 0
    with running(load_served_models([runs["mlp"]])) as port:
        for name in site.PAGE_FILES[1:]:
            served = urllib.request.urlopen(f"http://127.0.0.1:{port}/static/{name}", timeout=10).read()
            assert served == (package / name).read_bytes() == (out / "static" / name).read_bytes()
        served_page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
    with_data = served_page.replace(site.FIRST_SCRIPT, site.DATA_SCRIPT + site.FIRST_SCRIPT)
    assert (out / "index.html").read_text() == with_data


def test_a_rebuild_replaces_its_own_site_and_nothing_else(runs, study, capsys):
    out = study / "mysite"
    assert build(out, runs["lenet"], runs["mlp"]) == 0
    (out / "stale.txt").write_text("from the last build")
    assert build(out, runs["mlp"]) == 0
    assert not (out / "stale.txt").exists() and [m["name"] for m in read_site_data(out)["models"]] == ["mlp-s0"]
    assert sorted(p.name for p in study.iterdir()) == ["mysite", "reports"]  # no temporary folder left beside it

    capsys.readouterr()
    mine = study / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    assert build(mine, runs["mlp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a site that `mnistlab site` wrote" in err
    assert (mine / "todo.txt").read_text() == "mine" and sorted(p.name for p in mine.iterdir()) == ["todo.txt"]

    a_file = study / "site.html"
    a_file.write_text("a page")
    assert build(a_file, runs["mlp"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file, not a folder" in err and a_file.read_text() == "a page"


def test_a_directory_that_is_not_a_run_gets_one_line(study, capsys):
    (study / "not-a-run").mkdir()
    assert build(study / "mysite", study / "not-a-run") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not-a-run" in err and "Traceback" not in err
    assert not (study / "mysite").exists()


def test_an_interrupted_build_leaves_the_site_as_it_was(runs, study, monkeypatch):
    out = study / "mysite"
    assert build(out, runs["mlp"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while the figures are copied, after the data is written

    monkeypatch.setattr(shutil, "copyfile", interrupted)
    assert build(out, runs["lenet"], runs["mlp"]) == 130
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in study.iterdir()) == ["mysite", "reports"]


def test_a_layer_the_browser_cannot_run_is_named(runs):
    served = load_served_models([runs["mlp"]])[0]
    odd = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 28 * 28, 10))
    refusal = r"model mlp-s0: its layer Conv2d\(1, 4, .*padding=\(1, 1\).* cannot run in the browser"
    with pytest.raises(UserError, match=refusal):
        site.build_site(Path("unused"), [dataclasses.replace(served, model=odd)])


# --- the page from disk, in Chromium ------------------------------------------------------------


@pytest.fixture
def open_site(chromium):
    """open_site(out, **context options) -> the site's page from file://; the test fails on any
    script error or any request that leaves file:// (the page must need nothing else)."""
    contexts, problems = [], []

    def open_(out: Path, **options):
        context = chromium.new_context(**{"viewport": {"width": 1280, "height": 900}, **options})
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith(("file://", "data:", "blob:"))
                else problems.append(f"request outside file://: {r.url}")
            ),
        )
        page.route("http*://**/*", lambda route: route.abort())
        page.goto((out / "index.html").as_uri())
        page.wait_for_selector(".model")
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not problems


def draw(page, points):
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + points[0][0] * box["width"], box["y"] + points[0][1] * box["height"])
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
    page.mouse.up()


def seen(page) -> np.ndarray:
    return np.array(
        page.evaluate("""() => Array.from(document.getElementById('seen').getContext('2d')
        .getImageData(0, 0, 28, 28).data).filter((_, i) => i % 4 === 0)""")
    ).reshape(28, 28)


def bars(page) -> list[list[float]]:
    return page.evaluate("""() => [...document.querySelectorAll('.model')].map(card =>
        [...card.querySelectorAll('.bar')].map(bar => Number(bar.dataset.probability)))""")


def wait_for_answers(page, count: int = 2):
    page.wait_for_function(
        f"() => document.querySelectorAll('.model[data-state=answered]').length === {count}", timeout=10_000
    )


def pad_image(page) -> np.ndarray:
    """Python's preprocessing of the pad's pixels, as `mnistlab serve` would give it."""
    png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    return to_mnist(decode_image(base64.b64decode(png.split(",")[1])))


def click_pixel(page, selector: str, y: int, x: int, side: int, tap: bool = False):
    """Click (or tap) pixel (y, x) of a canvas `side` pixels wide, however large it is drawn."""
    box = page.locator(selector).bounding_box()
    at = {"x": (x + 0.5) * box["width"] / side, "y": (y + 0.5) * box["height"] / side}
    page.locator(selector).tap(position=at) if tap else page.locator(selector).click(position=at)


def arithmetic(page, model: str) -> dict:
    return page.evaluate(f"""() => {{ const panel = document.querySelector('.inside[data-name="{model}"] .arithmetic');
        return {{ hidden: panel.hidden, title: panel.querySelector('h3') && panel.querySelector('h3').textContent,
                  lines: [...panel.querySelectorAll('.sum li')].map(li => li.textContent),
                  output: Number(panel.querySelector('.relu') && panel.querySelector('.relu').dataset.output),
                  pictures: panel.querySelectorAll('canvas').length }}; }}""")


def test_the_site_from_disk_draws_answers_moves_and_shows_a_units_sum(open_site, runs, study):
    ARTIFACTS.mkdir(exist_ok=True)
    out = study / "mysite"
    assert build(out, runs["lenet"], runs["mlp"]) == 0
    page = open_site(out)
    assert page.url.startswith("file://")
    assert page.locator("#study-report:not([hidden]) tbody tr").count() == 2
    assert page.locator(".study-chart").count() == 2

    draw(page, SEVEN)
    wait_for_answers(page)
    page.wait_for_selector(".inside[data-state=shown] >> nth=1")
    image = pad_image(page)
    assert np.array_equal(seen(page), image) and image.sum() > 20 * 255
    models = [load_model(runs["lenet"])[0], load_model(runs["mlp"])[0]]
    for on_page, model in zip(bars(page), models):
        assert np.allclose(on_page, predict_probabilities(model, image[None])[0], atol=1e-5)

    # A pixel of a conv1 map: its arithmetic ends in the map's own value, which is PyTorch's.
    stages = layer_outputs(models[0], torch.from_numpy(image)[None])
    conv1 = stages["conv1"][0].numpy()
    y, x = np.unravel_index(conv1[2].argmax(), conv1[2].shape)
    click_pixel(page, ".inside[data-name=lenet5-bn-s1] [data-layer=conv1] canvas:nth-of-type(3)", y, x, 24)
    work = arithmetic(page, "lenet5-bn-s1")
    assert not work["hidden"] and work["title"].startswith(f"conv1, map 3, row {y}, column {x}")
    assert work["pictures"] == 2 and any(line.startswith("batch norm") for line in work["lines"])
    assert work["output"] == pytest.approx(float(conv1[2, y, x]), abs=1e-4) and work["output"] > 0

    # A pixel of a conv2 map reads 6 channels of pool1: 6 windows and 6 kernels.
    click_pixel(page, ".inside[data-name=lenet5-bn-s1] [data-layer=conv2] canvas:nth-of-type(5)", 3, 4, 8)
    work = arithmetic(page, "lenet5-bn-s1")
    assert work["pictures"] == 12 and work["output"] == pytest.approx(float(stages["conv2"][0, 4, 3, 4]), abs=1e-4)

    # An MLP unit: its 784 weights beside the input, and its sum.
    fc1 = layer_outputs(models[1], torch.from_numpy(image)[None])["fc1"][0].numpy()
    page.locator(".inside[data-name=mlp-s0] .stage.units canvas").first.click()
    work = arithmetic(page, "mlp-s0")
    assert work["title"] == f"fc1, unit {int(fc1.argmax())}: the 784 pixels of the input times its 784 weights"
    assert work["pictures"] == 3 and work["output"] == pytest.approx(float(fc1.max()), abs=1e-4)
    page.screenshot(path=ARTIFACTS / "site-desktop.png", full_page=True)

    # The sliders move the digit: the page shows torch's moved image and the models' answers to it.
    page.focus("#move-dx")
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    page.focus("#move-angle")
    for _ in range(2):
        page.keyboard.press("ArrowLeft")
    moved = move_images(torch.from_numpy(image), 3, 0, -10.0).numpy()
    page.wait_for_function("() => document.getElementById('move-angle-text').textContent === '10° clockwise'")
    wait_for_answers(page)
    assert np.abs(seen(page).astype(int) - moved).max() <= 1
    for on_page, model in zip(bars(page), models):
        assert np.allclose(on_page, predict_probabilities(model, moved[None])[0], atol=1e-4)


def test_on_a_phone_a_tap_on_a_map_shows_its_arithmetic(open_site, runs, study):
    ARTIFACTS.mkdir(exist_ok=True)
    out = study / "mysite"
    assert build(out, runs["lenet"], runs["mlp"]) == 0
    page = open_site(out, viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    draw(page, SEVEN)
    wait_for_answers(page)
    page.screenshot(path=ARTIFACTS / "site-phone.png")
    assert page.evaluate("window.scrollY") == 0 and page.locator("#answers li[data-state=answered]").count() == 2
    page.wait_for_selector(".inside[data-state=shown] >> nth=1")
    click_pixel(page, ".inside[data-name=lenet5-bn-s1] [data-layer=conv1] canvas:nth-of-type(1)", 10, 12, 24, tap=True)
    work = arithmetic(page, "lenet5-bn-s1")
    assert not work["hidden"] and work["title"].startswith("conv1, map 1, row 10, column 12")


def test_the_sites_test_digits_are_shown_with_their_labels(open_site, runs, tmp_path):
    images, labels = drawn_test_set()
    tests = {"images": base64.b64encode(images.tobytes()).decode(), "labels": labels.tolist()}
    site.build_site(tmp_path / "mysite", load_served_models([runs["mlp"]]), tests=tests)
    page = open_site(tmp_path / "mysite")
    page.click("#test-digit")
    wait_for_answers(page, 1)
    index, label = (int(n) for n in re.search(r"#(\d+): the true label is (\d)", page.inner_text("#status")).groups())
    assert label == labels[index] and np.array_equal(seen(page), images[index])


def test_served_the_page_says_where_a_units_arithmetic_is(chromium, runs, running):
    with running(load_served_models([runs["lenet"]])) as port:
        page = chromium.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector(".model")
        draw(page, SEVEN)
        page.wait_for_selector(".inside[data-state=shown]")
        click_pixel(page, "[data-layer=conv1] canvas:nth-of-type(1)", 5, 5, 24)
        assert "mnistlab site" in page.inner_text(".inside .arithmetic")
        page.close()


# --- the browser's arithmetic against Python's ----------------------------------------------------

LOGITS = """(images) => window.MNISTLAB_SITE.models.map((m) => {
    const model = { ...m, layers: m.layers.map(decodeLayer) }, { mean, std } = window.MNISTLAB_SITE.normalization;
    return images.map((image) => {
        const stages = layerOutputs(model, normalizeImage(Uint8Array.from(image), mean, std));
        return Array.from(Object.values(stages).at(-1).values);
    });
})"""


def check_logits(page, paths: list[Path], images: np.ndarray):
    on_page = page.evaluate(LOGITS, images.reshape(len(images), -1).tolist())
    for logits, path in zip(on_page, paths):
        expected = predict_logits(load_model(path)[0], torch.from_numpy(images)).numpy()
        assert np.abs(np.array(logits) - expected).max() <= 1e-4, path.name


@pytest.fixture(scope="module")
def registry_site(tmp_path_factory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("registry")
    # all but lenet5-1998 and its road's steps, whose layers forward.js does not run (test_models_1998.py)
    paths = [path for path in save_registry_models(root / "runs") if not path.name.startswith("lenet5-1998")]
    site.build_site(root / "site", load_served_models(paths))
    return root / "site", paths


def test_logits_equal_pytorchs_for_every_model_in_the_registry(open_site, registry_site):
    out, paths = registry_site
    images = np.concatenate([drawn_test_set()[0], make_arrays(0, 97).test_images])  # 100 digits
    check_logits(open_site(out), paths, images)


def test_logits_equal_pytorchs_on_100_mnist_test_digits(open_site, registry_site):
    from mnistlab.data import load_dataset

    if not os.environ.get("MNISTLAB_DATA"):
        pytest.skip("set MNISTLAB_DATA to a data directory with MNIST")
    try:
        data = load_dataset("mnist", os.environ["MNISTLAB_DATA"], log=lambda line: None, download=False)
    except UserError as e:
        pytest.skip(f"MNIST is not prepared: {e}")
    out, paths = registry_site
    check_logits(open_site(out), paths, np.ascontiguousarray(data.test_images[:100]))


DRAW_AND_PREPROCESS = """([strokes, width]) => {
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 280;
    const pen = canvas.getContext('2d');
    pen.fillStyle = 'white'; pen.fillRect(0, 0, 280, 280);
    pen.strokeStyle = '#111'; pen.lineWidth = width; pen.lineCap = pen.lineJoin = 'round';
    for (const stroke of strokes) {
        pen.beginPath(); pen.moveTo(stroke[0][0] * 280, stroke[0][1] * 280);
        for (const [x, y] of stroke.slice(1)) pen.lineTo(x * 280, y * 280);
        pen.stroke();
    }
    return { png: canvas.toDataURL('image/png'), mnist: Array.from(toMnist(pen.getImageData(0, 0, 280, 280))) };
}"""


def test_the_browsers_preprocessing_and_moves_equal_pythons(open_site, runs, study):
    out = study / "mysite"
    assert build(out, runs["mlp"]) == 0
    page = open_site(out)
    rng = np.random.default_rng(0)
    for _ in range(16):
        strokes = [
            [rng.uniform(0.1, 0.9, 2).tolist() for _ in range(rng.integers(2, 6))] for _ in range(rng.integers(1, 3))
        ]
        drawn = page.evaluate(DRAW_AND_PREPROCESS, [strokes, int(rng.choice([8, 16, 26, 40]))])
        expected = to_mnist(decode_image(base64.b64decode(drawn["png"].split(",")[1])))
        assert np.abs(np.array(drawn["mnist"]).reshape(28, 28) - expected.astype(int)).max() <= 1
        assert expected.any()
        for dx, dy, angle in [(2, -1, 0), (0, 0, 15), (-3, 2, -40)]:
            moved = page.evaluate(
                "([image, dx, dy, a]) => Array.from(moveImage(Uint8Array.from(image), dx, dy, a))",
                [expected.ravel().tolist(), dx, dy, angle],
            )
            python = move_images(torch.from_numpy(expected), dx, dy, float(angle)).numpy()
            assert np.abs(np.array(moved).reshape(28, 28) - python.astype(int)).max() <= 1
