"""`mnistlab serve`: the JSON API against a real server in a thread, every bad request, and
how the default models are chosen. Models are untrained; the test set is drawn digits."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from synthetic import (
    STROKES,
    draw_digit,
    drawn_test_set,
    png_bytes,
    png_claiming_size,
    request,
    save_model,
)

from mnistlab import cli, server
from mnistlab.checkpoint import load_model
from mnistlab.errors import UserError
from mnistlab.models import count_parameters
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import MAX_SIDE, to_mnist
from mnistlab.server import (
    MAX_BODY,
    Limits,
    default_model_paths,
    load_served_models,
    make_server,
)

TEST_IMAGES, TEST_LABELS = drawn_test_set()


def post_png(port, image_bytes):
    return request(port, "POST", "/api/predict", image_bytes, {"Content-Type": "image/png"})


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [save_model(root / "lenet5-s0", "lenet5"), save_model(root / "mlp-s0", "mlp")]


@pytest.fixture(scope="module")
def port(run_dirs, running):
    with running(load_served_models(run_dirs)) as port:
        yield port


def check_predictions(answer, image_bytes, run_dirs):
    """The answer holds the same preprocessing and probabilities as the models applied by hand."""
    from mnistlab.preprocess import decode_image

    expected_image = to_mnist(decode_image(image_bytes))
    assert answer["preprocessed"] == expected_image.tolist() and answer["blank"] is False
    assert [p["name"] for p in answer["predictions"]] == [d.name for d in run_dirs]
    for prediction, run_dir in zip(answer["predictions"], run_dirs):
        expected = predict_probabilities(load_model(run_dir)[0], expected_image[None])[0]
        assert np.allclose(prediction["probabilities"], expected, atol=1e-5)
        assert prediction["digit"] == int(expected.argmax())
        assert abs(sum(prediction["probabilities"]) - 1) < 1e-4


def test_models_lists_names_and_parameter_counts(port, run_dirs):
    status, _, answer = request(port, "GET", "/api/models")
    assert status == 200 and answer["help"] is None
    assert [m["name"] for m in answer["models"]] == ["lenet5-s0", "mlp-s0"]
    assert [m["parameters"] for m in answer["models"]] == [count_parameters(load_model(d)[0]) for d in run_dirs]
    assert answer["models"][0]["model"] == "lenet5" and answer["models"][0]["val_acc"] == 0.5


@pytest.mark.parametrize("digit", sorted(STROKES))
def test_predict_png_bytes(port, run_dirs, digit):
    image = png_bytes(draw_digit(digit, (300, 200)))
    status, _, answer = post_png(port, image)
    assert status == 200
    check_predictions(answer, image, run_dirs)


def test_predict_json_data_url_and_jpeg_give_the_png_answer(port, run_dirs):
    image = png_bytes(draw_digit(7, (200, 200), paper=0, ink=255))
    data_url = "data:image/png;base64," + base64.b64encode(image).decode()
    status, _, answer = request(
        port, "POST", "/api/predict", json.dumps({"image": data_url}).encode(), {"Content-Type": "application/json"}
    )
    assert status == 200
    check_predictions(answer, image, run_dirs)
    assert answer == post_png(port, image)[2]
    jpeg = png_bytes(draw_digit(7, (200, 200)), "JPEG", quality=90)
    status, _, answer = request(port, "POST", "/api/predict", jpeg, {"Content-Type": "image/jpeg"})
    assert status == 200
    check_predictions(answer, jpeg, run_dirs)


def test_blank_drawing_is_answered_and_flagged(port):
    status, _, answer = post_png(port, png_bytes(draw_digit(7, (280, 280), ink=255)))  # white on white
    assert status == 200 and answer["blank"] is True and not np.any(answer["preprocessed"])


def test_test_digit_by_index_and_at_random(port, run_dirs):
    status, _, answer = request(port, "GET", "/api/test-digit?index=2")
    assert status == 200 and answer["index"] == 2 and answer["label"] == TEST_LABELS[2]
    assert answer["preprocessed"] == TEST_IMAGES[2].tolist()  # a test image is not preprocessed again
    expected = predict_probabilities(load_model(run_dirs[1])[0], TEST_IMAGES[2:3])[0]
    assert np.allclose(answer["predictions"][1]["probabilities"], expected, atol=1e-5)
    status, _, answer = request(port, "GET", "/api/test-digit")
    assert status == 200 and answer["label"] == TEST_LABELS[answer["index"]]
    for bad in ("?index=99", "?index=-1", "?index=seven"):
        status, _, answer = request(port, "GET", "/api/test-digit" + bad)
        assert status == 400 and "index" in answer["error"]


def test_page_and_its_files_are_served_and_need_nothing_from_outside(port):
    status, headers, html = request(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert (
        b'<canvas id="pad"' in html and b'src="static/app.js"' in html
    )  # relative: the static site uses the same file
    for path, kind in [
        ("/static/app.js", "text/javascript"),
        ("/static/forward.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ]:
        status, headers, body = request(port, "GET", path)
        assert status == 200 and headers["Content-Type"].startswith(kind) and len(body) > 500
        assert not re.search(rb"https?://|//cdn|@import", body)
    assert not re.search(rb"https?://", html)


# --- bad requests: a 4xx with a JSON error, and the server keeps serving -------------------------

PNG = {"Content-Type": "image/png"}

BAD_REQUESTS = {
    "not an image": ("POST", "/api/predict", b"hello, not a picture", {"Content-Type": "image/png"}, 400),
    "empty body": ("POST", "/api/predict", b"", {"Content-Type": "image/png"}, 400),
    "body over 1 MB": ("POST", "/api/predict", b"\x89PNG" + bytes(MAX_BODY), PNG, 413),
    "image over 4096x4096": ("POST", "/api/predict", png_claiming_size(MAX_SIDE + 1, 16), PNG, 413),
    "real image, too wide": ("POST", "/api/predict", png_bytes(draw_digit(1, (MAX_SIDE + 1, 8))), PNG, 413),
    "decompression bomb": ("POST", "/api/predict", png_claiming_size(50000, 50000), PNG, 413),
    "truncated image": ("POST", "/api/predict", png_bytes(draw_digit(7))[:300], {"Content-Type": "image/png"}, 400),
    "malformed JSON": ("POST", "/api/predict", b'{"image": "data:', {"Content-Type": "application/json"}, 400),
    "JSON without image": ("POST", "/api/predict", b'{"picture": 1}', {"Content-Type": "application/json"}, 400),
    "JSON bad base64": (
        "POST",
        "/api/predict",
        b'{"image": "data:image/png;base64,@@@"}',
        {"Content-Type": "application/json"},
        400,
    ),
    "JSON not base64 URL": (
        "POST",
        "/api/predict",
        b'{"image": "data:image/png,abc"}',
        {"Content-Type": "application/json"},
        400,
    ),
    "JSON base64 of text": (
        "POST",
        "/api/predict",
        b'{"image": "aGVsbG8="}',
        {"Content-Type": "application/json"},
        400,
    ),
    "JSON nested deeply": (
        "POST",
        "/api/predict",
        b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        {"Content-Type": "application/json"},
        400,
    ),
    "Content-Length 1e20": ("POST", "/api/predict", None, {**PNG, "Content-Length": "1e20"}, 400),
    "Content-Length -1": ("POST", "/api/predict", None, {**PNG, "Content-Length": "-1"}, 400),
    "Content-Length 10**20": ("POST", "/api/predict", None, {**PNG, "Content-Length": str(10**20)}, 413),  # never sent
    "Content-Length of 5000 digits": ("POST", "/api/predict", None, {**PNG, "Content-Length": "9" * 5000}, 413),
    "unknown route": ("GET", "/api/nothing", None, {}, 404),
    "path outside static": ("GET", "/static/../serve.py", None, {}, 404),
    "GET on predict": ("GET", "/api/predict", None, {}, 405),
    "POST on models": ("POST", "/api/models", b"{}", {}, 405),
    "DELETE on page": ("DELETE", "/", None, {}, 405),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_request_gets_a_4xx_json_error_and_the_server_keeps_serving(port, run_dirs, case):
    method, path, body, headers, expected = BAD_REQUESTS[case]
    status, response_headers, answer = request(port, method, path, body, headers)
    assert status == expected
    assert response_headers["Content-Type"] == "application/json" and answer["error"]
    image = png_bytes(draw_digit(4))
    status, _, answer = post_png(port, image)
    assert status == 200
    check_predictions(answer, image, run_dirs)


def test_a_content_length_the_client_will_not_send_is_refused_at_once(port):
    """The server answers without waiting for a body it would refuse anyway (it used to read it)."""
    start = time.monotonic()
    status, _, answer = request(port, "POST", "/api/predict", None, {**PNG, "Content-Length": str(10**20)})
    assert status == 413 and "too large" in answer["error"]
    assert time.monotonic() - start < 2


def test_body_without_content_length_is_refused(port):
    status, _, answer = request(port, "POST", "/api/predict", b"", {"Content-Type": "image/png"}, content_length=False)
    assert status == 411 and "Content-Length" in answer["error"]
    assert post_png(port, png_bytes(draw_digit(7)))[0] == 200


def raw_exchange(port, data: bytes) -> bytes:
    """Everything the server sends back for `data`, up to the connection's end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(1 << 16):
            received += chunk
    return received


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/api/models", "/api/test-digit?index=1"])
def test_head_answers_with_the_headers_of_get_and_no_body(port, path):
    _, get_headers, get_body = request(port, "GET", path)
    answer = raw_exchange(port, f"HEAD {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and body == b""
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:])
    assert headers["Content-Type"] == get_headers["Content-Type"]
    assert int(headers["Content-Length"]) == len(get_body if isinstance(get_body, bytes) else json.dumps(get_body))


def test_head_or_post_where_the_route_takes_the_other_says_which(port):
    answer = raw_exchange(port, b"HEAD /api/predict HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ") and b"\r\nAllow: POST\r\n" in head and body == b""
    status, headers, _ = request(port, "POST", "/api/models", b"{}")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def wait_for(condition, seconds=5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def seconds_until_closed(sock: socket.socket) -> float:
    """How long the server takes to close `sock` (at most the socket's own timeout, then it raises)."""
    start = time.monotonic()
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - start


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST /api/predict HTTP/1.1\r\nHost: localhost\r\n",  # stops inside the headers
        b"POST /api/predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n\x89PNG",  # inside the body
    ],
    ids=["idle", "half the headers", "half the body"],
)
def test_a_connection_that_goes_quiet_is_closed_after_the_timeout(run_dirs, sent, running_server):
    lines = []
    with running_server(load_served_models(run_dirs), log=lines.append, limits=Limits(timeout=0.5)) as server:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(sent)
            assert 0.3 < seconds_until_closed(sock) < 3
        assert wait_for(lambda: len(lines) == (1 if sent else 0), 1)  # one line for a request cut short
        assert not any("Traceback" in line for line in lines), lines
        assert post_png(port, png_bytes(draw_digit(7)))[0] == 200  # the server goes on


def hang_up(sock: socket.socket) -> None:
    """Close with a reset, as a client that crashed or lost its network would."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_client_that_hangs_up_gets_one_line_in_the_log_not_a_traceback(run_dirs, capfd, running_server):
    def slow_test_set():
        time.sleep(1)  # the client is gone by the time the answer is written
        return TEST_IMAGES, TEST_LABELS

    lines = []
    with running_server(load_served_models(run_dirs), test_set=slow_test_set, log=lines.append) as server:
        port = server.server_address[1]
        for sent in [
            b"GET /api/test-digit HTTP/1.1\r\nHost: localhost\r\n\r\n",  # hangs up before the answer
            b"POST /api/predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n\x89PNG",
        ]:
            count = len(lines)  # before the hang-up, which the server may log at once
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(sent)
            time.sleep(0.2)  # the server has read what was sent
            hang_up(sock)
            assert wait_for(lambda: len(lines) > count), "nothing logged"
        assert request(port, "GET", "/api/test-digit?index=0")[0] == 200
    assert len(lines) == 2 and all("connection closed" in line for line in lines), lines
    assert "Traceback" not in "".join(capfd.readouterr())


# --- what a flood of large images may take ------------------------------------------------------


def test_an_image_with_more_pixels_than_allowed_is_refused_before_it_is_decoded(run_dirs, running):
    limits = Limits(pixels_per_request=150 * 100, pixels_in_flight=150 * 100)
    with running(load_served_models(run_dirs), limits=limits) as port:
        header_only = png_claiming_size(151, 100)  # no pixel data: decoding it would be a 400
        for image in [png_bytes(draw_digit(7, (151, 100))), header_only]:
            status, _, answer = post_png(port, image)
            assert status == 413 and "15,100 pixels" in answer["error"] and "15,000" in answer["error"]
        assert post_png(port, png_bytes(draw_digit(7, (150, 100))))[0] == 200


def test_a_full_decode_budget_gets_503_with_retry_after_and_room_lets_the_request_through(run_dirs, running_server):
    with running_server(load_served_models(run_dirs), limits=Limits(decode_wait=0.3)) as server:
        port, image = server.server_address[1], png_bytes(draw_digit(7))
        with server.decodes.reserve(server.decodes.capacity):  # another request decoding the largest image allowed
            start = time.monotonic()
            status, headers, answer = post_png(port, image)
            assert status == 503 and headers["Retry-After"] == "1" and "busy" in answer["error"]
            assert 0.25 < time.monotonic() - start < 3
            status, _, answer = request(port, "GET", "/api/test-digit?index=0")  # no decoding: not held up
            assert status == 200
        assert post_png(port, image)[0] == 200
        held = ExitStack()  # room that frees within decode_wait: the request waits for it
        held.enter_context(server.decodes.reserve(server.decodes.capacity))
        release = threading.Timer(0.1, held.close)
        release.start()
        assert post_png(port, image)[0] == 200
        release.join()
        assert server.decodes.used == 0


def test_decodes_run_on_a_fixed_number_of_threads(run_dirs, monkeypatch, running):
    """A decode's memory stays with the thread that allocated it: a few threads, not one per request."""
    running_now, most, threads, lock = 0, 0, set(), threading.Lock()
    to_mnist, pairs = server.to_mnist, threading.Barrier(2, timeout=5)  # decodes end two by two

    def counting_to_mnist(image):
        nonlocal running_now, most
        with lock:
            running_now += 1
            most = max(most, running_now)
            threads.add(threading.current_thread().name)
        pairs.wait()
        with lock:
            running_now -= 1
        return to_mnist(image)

    monkeypatch.setattr(server, "to_mnist", counting_to_mnist)
    with running(load_served_models(run_dirs), limits=Limits(decoders=2)) as port:
        image, statuses = png_bytes(draw_digit(7)), []
        clients = [threading.Thread(target=lambda: statuses.append(post_png(port, image)[0])) for _ in range(6)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(10)
    assert statuses == [200] * 6
    assert most == 2 and len(threads) == 2 and all(name.startswith("decode") for name in threads)


def test_missing_test_set_says_how_to_get_it(run_dirs, running):
    def no_data():
        raise UserError("the mnist test set is not prepared yet: run `mnistlab data` first")

    with running(load_served_models(run_dirs), test_set=no_data) as port:
        status, _, answer = request(port, "GET", "/api/test-digit")
        assert status == 503 and "mnistlab data" in answer["error"]
        assert post_png(port, png_bytes(draw_digit(7)))[0] == 200


def test_without_models_the_api_says_how_to_train_one(running):
    with running([]) as port:
        status, _, answer = request(port, "GET", "/api/models")
        assert status == 200 and answer["models"] == []
        assert "mnistlab train" in answer["help"] and "make run" in answer["help"]
        status, _, answer = post_png(port, png_bytes(draw_digit(7)))
        assert status == 200 and answer["predictions"] == [] and np.any(answer["preprocessed"])


def test_binds_to_loopback_by_default_and_a_taken_port_is_a_user_error():
    server = make_server([], port=0, log=None)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with pytest.raises(UserError, match="cannot listen"):
            make_server([], port=port, log=None)
    finally:
        server.server_close()


@pytest.mark.parametrize("port_text", ["-1", "70000", "eighty"])
def test_serve_refuses_a_port_out_of_range_in_one_line(tmp_path, monkeypatch, capsys, port_text):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main(["serve", "--port", port_text])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and "--port" in error and "0..65535" in error


def test_serve_on_a_port_in_use_says_so_in_one_line(run_dirs, capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port), "--models", str(run_dirs[0])]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in error and "in use" in error


# --- default models ----------------------------------------------------------------------------


def age(path: Path, seconds_ago: float) -> None:
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))


def test_default_models_are_the_best_per_family_of_the_latest_study(tmp_path):
    old, new = tmp_path / "reports" / "mnist-old", tmp_path / "reports" / "mnist"
    save_model(old / "runs" / "lenet5-s0", "lenet5", val_acc=0.999)
    save_model(old / "runs" / "mlp-s0", "mlp", val_acc=0.999)
    (old / "results.json").write_text("{}")
    age(old / "results.json", 3600)
    for name, model, val_acc in [
        ("lenet5-s0", "lenet5", 0.97),
        ("lenet5-bn-s1", "lenet5-bn", 0.99),
        ("lenet5-reg-s0", "lenet5-reg", float("nan")),
        ("mlp-s0", "mlp", 0.98),
        ("mlp-small-s2", "mlp-small", 0.985),
    ]:
        save_model(new / "runs" / name, model, val_acc=val_acc)
    save_model(new / "runs" / "fashion-lenet5", "lenet5", val_acc=1.0, dataset="fashion-mnist")  # not digits
    (new / "runs" / "broken").mkdir()
    (new / "runs" / "broken" / "checkpoint.pt").write_bytes(b"junk")
    (new / "results.json").write_text("{}")
    skipped = []
    chosen = default_model_paths(tmp_path, log=skipped.append)
    assert [p.name for p in chosen] == ["lenet5-bn-s1", "mlp-small-s2"]
    assert len(skipped) == 1 and "broken" in skipped[0]


def test_default_models_fall_back_to_the_newest_runs(tmp_path):
    assert default_model_paths(tmp_path) == []
    for name, model, seconds_ago in [
        ("a-lenet5", "lenet5", 300),
        ("b-lenet5-bn", "lenet5-bn", 100),
        ("c-mlp", "mlp", 50),
        ("d-mlp-small", "mlp-small", 500),
    ]:
        age(save_model(tmp_path / "runs" / name, model) / "checkpoint.pt", seconds_ago)
    assert [p.name for p in default_model_paths(tmp_path)] == ["b-lenet5-bn", "c-mlp"]


def test_serve_command_starts_and_answers(tmp_path, run_dirs):
    command = [sys.executable, "-m", "mnistlab", "serve", "--port", "0", "--models", *map(str, run_dirs)]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("serving on")):
            line = process.stdout.readline()
            assert line, f"mnistlab serve ended early: {''.join(lines)}"
            lines.append(line)
        port = int(re.search(r":(\d+)/", lines[-1]).group(1))
        assert "lenet5-s0: lenet5, 44,426 parameters" in "".join(lines)
        status, _, answer = request(port, "GET", "/api/models")
        assert status == 200 and len(answer["models"]) == 2
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- many clients, slow clients, and pages elsewhere ---------------------------------------------


def test_idle_connections_take_no_thread_and_the_api_still_answers(port):
    threads = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - threads < 10  # one thread each before: 100
        start = time.monotonic()
        status, _, answer = request(port, "GET", "/api/models")
        assert status == 200 and len(answer["models"]) == 2 and time.monotonic() - start < 2
    finally:
        for sock in socks:
            sock.close()


def test_a_client_that_trickles_its_request_is_cut_off_at_the_deadline(run_dirs, running_server):
    lines = []
    with running_server(load_served_models(run_dirs), log=lines.append, limits=Limits(timeout=1.0)) as server:
        port = server.server_address[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            start = time.monotonic()
            try:  # a byte every 0.25 s: each read comes well within the timeout, the request never ends
                for byte in b"GET /api/models HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
                    sock.send(bytes([byte]))
                    time.sleep(0.25)
            except OSError:  # the server closed the connection
                pass
            assert time.monotonic() - start < 3, "the trickle went on past the request's deadline"
        assert request(port, "GET", "/api/models")[0] == 200


FEW_FILES = """\
import resource, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from mnistlab.server import make_server
server = make_server([], port=0, test_set=lambda: None, log=None)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_more_idle_connections_than_the_server_may_open_files_neither_spin_nor_block_it():
    process = subprocess.Popen([sys.executable, "-c", FEW_FILES], stdout=subprocess.PIPE, text=True)
    socks = []
    try:
        port = int(process.stdout.readline())
        for _ in range(260):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            stat = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(stat[11]) + int(stat[12])) / ticks

        time.sleep(0.5)
        before = cpu()
        time.sleep(2)
        assert cpu() - before < 0.5  # an accept loop that spins takes the whole 2 s
        status, _, answer = request(port, "GET", "/api/models")
        assert status == 200 and answer["models"] == []
    finally:
        for sock in socks:
            sock.close()
        process.kill()
        process.wait(10)


@pytest.mark.parametrize(
    "host,allowed",
    [
        ("localhost:{port}", True),
        ("127.0.0.1:{port}", True),
        ("LOCALHOST:{port}", True),
        ("localhost", True),
        ("evil.example:{port}", False),
        ("evil.example", False),
        ("127.0.0.1:1", False),
        ("localhost.evil.example", False),
    ],
)
def test_only_requests_addressed_to_this_server_are_answered(port, host, allowed):
    sent = f"GET /api/models HTTP/1.1\r\nHost: {host.format(port=port)}\r\nConnection: close\r\n\r\n"
    head, _, body = raw_exchange(port, sent.encode()).partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head
    if allowed:
        assert head.startswith(b"HTTP/1.1 200 ") and "models" in json.loads(body)
    else:
        assert head.startswith(b"HTTP/1.1 403 ") and "Host" in json.loads(body)["error"]


def test_a_request_without_a_host_or_with_two_is_refused(port):
    for hosts in ([], ["localhost", "evil.example"]):
        sent = "GET /api/models HTTP/1.1\r\n" + "".join(f"Host: {h}\r\n" for h in hosts) + "Connection: close\r\n\r\n"
        assert raw_exchange(port, sent.encode()).startswith(b"HTTP/1.1 403 ")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_predict_takes_only_an_image_or_json_body(port, content_type):
    """The types a page elsewhere can send without the browser asking first are refused."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    status, _, answer = request(port, "POST", "/api/predict", png_bytes(draw_digit(7)), headers)
    assert status == 415 and "Content-Type" in answer["error"]


def test_models_shows_no_absolute_path(port, run_dirs):
    assert run_dirs[0].is_absolute()
    _, _, answer = request(port, "GET", "/api/models")
    for shown in [m["path"] for m in answer["models"]] + [answer["study"]["results"]]:
        assert shown is None or not Path(shown).is_absolute(), shown
    assert [m["path"] for m in answer["models"]][0].endswith("lenet5-s0")


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_other_methods_get_405_as_json(port, method):
    status, headers, answer = request(port, method, "/api/predict", b"\x89PNG", {"Content-Type": "image/png"})
    assert status == 405 and headers["Content-Type"] == "application/json" and answer["error"]


@pytest.mark.parametrize(
    "head,status",
    [
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: localhost\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n", 431),
        (b"GET / HTTP/x.y\r\nHost: localhost\r\n\r\n", 400),
    ],
)
def test_requests_http_server_refuses_get_json_errors_too(port, head, status):
    answer = raw_exchange(port, head)
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 %d " % status), head_part
    assert b"Content-Type: application/json" in head_part and json.loads(body)["error"]


def test_two_requests_on_one_connection_are_both_answered(port):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(2):
            connection.request("GET", "/api/models")
            response = connection.getresponse()
            assert response.status == 200 and json.loads(response.read())["models"]
    finally:
        connection.close()


def test_serve_shows_the_study_of_the_models_it_serves_only(tmp_path):
    from mnistlab.cli.serve import study_results

    study = tmp_path / "reports" / "mnist"
    runs = [save_model(study / "runs" / name) for name in ("lenet5-e10-s0", "mlp-e10-s0")]
    elsewhere = save_model(tmp_path / "elsewhere" / "mine")
    assert study_results(runs) == study.resolve() / "results.json"
    assert study_results([runs[0] / "checkpoint.pt"]) == study.resolve() / "results.json"
    assert study_results([elsewhere]) is None and study_results([runs[0], elsewhere]) is None


def test_a_results_json_nested_too_deeply_is_no_study_not_a_crash(tmp_path):
    results = tmp_path / "results.json"
    results.write_text("[" * 200_000)
    assert server.study_summary(results)["robustness"] is None


def test_when_full_the_connection_waiting_longest_makes_room(run_dirs, running_server):
    with running_server(load_served_models(run_dirs), limits=Limits(connections=20)) as server:
        port = server.server_address[1]
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        try:
            status, _, answer = request(port, "GET", "/api/models")
            assert status == 200 and len(answer["models"]) == 2
            assert socks[0].recv(1) == b""  # the oldest idle connection was closed to let the others in
            assert len(server.room.waiting) <= 20
        finally:
            for sock in socks:
                sock.close()
