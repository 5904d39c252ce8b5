"""The server behind `mnistlab serve`: a local web page to draw a digit on and watch the models answer.

Standard library only (ThreadingHTTPServer). Routes:
  GET  /                 the page (static/index.html, app.js, forward.js, style.css; nothing from outside)
  GET  /api/models       {"models": [{name, label, model, parameters, epoch, val_acc, dataset, path}],
                          "help": null, or how to train a model when there is none,
                          "study": {"results": path of the study's results.json or null,
                                    "robustness": its accuracy against shift and rotation, or null}}
  POST /api/predict      PNG or JPEG bytes, or JSON {"image": "data:image/png;base64,..."} ->
                         {"preprocessed": 28x28 ints, "blank": bool, "move": {dx, dy, angle},
                          "model_input": 28x28 ints (the preprocessed image, moved),
                          "predictions": [{name, digit, probabilities: [10 floats], inside?}]}
                         Query: ?dx=&dy= whole pixels (right, down) and ?angle= degrees
                         (counter-clockwise) move the 28x28 image before the models see it;
                         ?inside=1 adds each model's layers (inside.look_inside).
  GET  /api/test-digit   a random test image (or ?index=N): the predict answer plus index, label;
                         the same query options
HEAD works wherever GET does. Every error, a client's or the server's, is answered with
{"error": "..."}; the server keeps serving. It answers only requests addressed to it by the
address it listens on or by localhost (the Host header), so that a web page elsewhere cannot
reach it through a DNS name of its own; /api/predict takes only an image or JSON body, which
no page elsewhere can send without the browser asking first; no absolute path is shown.
What clients can take is bounded (`Limits`): connections wait in one thread and a request,
once whole, is answered by one of a few threads (connections.py), within a deadline; images
are decoded within a budget of pixels, so that memory stays under 1 GB whatever arrives (an
image over the budget gets 413, one that finds it full 503).
"""

from __future__ import annotations

import base64
import binascii
import errno
import io
import ipaddress
import json
import math
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch
from PIL import Image
from torch import nn

from mnistlab.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_model
from mnistlab.connections import Connection, RequestReader, SocketWriter, WaitingRoom
from mnistlab.data import load_dataset
from mnistlab.errors import UserError
from mnistlab.inside import look_inside, model_label
from mnistlab.models import CONVOLUTIONAL, FULLY_CONNECTED, MODELS, count_parameters
from mnistlab.predict import predict_probabilities
from mnistlab.preprocess import FORMATS, MAX_SIDE, ImageTooLarge, decode_image, to_mnist
from mnistlab.transform import move_images, read_robustness

MAX_BODY = 1 << 20  # bytes; a drawn digit as PNG is a few kB
MAX_DRAIN = 16 << 20  # an oversized body up to this is read and dropped, so the client sees the 413
RETRY_AFTER = 1  # seconds, in a 503 for a full decode budget
MAX_SHIFT, MAX_ANGLE = 28, 180  # ?dx=, ?dy= in pixels and ?angle= in degrees, either way
FAMILIES = (CONVOLUTIONAL, FULLY_CONNECTED)  # one default model per family (models.MODELS), in this order
NO_MODEL_HELP = (
    "No trained model found. Train one with `mnistlab train --model lenet5` and "
    "`mnistlab train --model mlp`, or run the whole study with `make run`; then restart "
    "`mnistlab serve` (or point it at run directories with `--models`)."
)
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/forward.js": ("forward.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
PAGE_POLICY = "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'"
IMAGE_TYPES = ("image/png", "image/jpeg", "application/json")  # what /api/predict takes
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class ServedModel:
    name: str  # the run directory's name
    model_name: str
    parameters: int
    epoch: int
    val_acc: float | None
    dataset: str
    path: str
    model: nn.Module
    label: str = ""  # for learners: "LeNet-5 + all three regularizers"

    def describe(self) -> dict:
        return {
            "name": self.name,
            "label": self.label,
            "model": self.model_name,
            "parameters": self.parameters,
            "epoch": self.epoch,
            "val_acc": self.val_acc,
            "dataset": self.dataset,
            "path": self.path,
        }


def load_served_models(paths: Iterable[str | Path]) -> list[ServedModel]:
    served, names = [], set()
    for path in map(Path, paths):
        model, ckpt = load_model(path)
        # The run directory's name; two runs of the same name (from different studies) get (2), (3)...
        name = (path if path.is_dir() or path.name != CHECKPOINT_NAME else path.parent).resolve().name
        name = next(n for n in (name, *(f"{name} ({i})" for i in range(2, len(names) + 3))) if n not in names)
        names.add(name)
        val_acc = final_val_acc(ckpt)
        served.append(
            ServedModel(
                name,
                ckpt["model_name"],
                count_parameters(model),
                int(ckpt["epoch"]),
                val_acc if math.isfinite(val_acc) else None,
                ckpt["config"].get("dataset", "mnist"),
                shown_path(path),
                model,
                model_label(ckpt["model_name"], augment=ckpt["config"].get("augment") is True),
            )
        )
    return served


def shown_path(path: Path) -> str:
    """`path` as the page may show it: relative to the working directory, never absolute (a page
    elsewhere must not learn the machine's directories); outside it, its last two parts."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(Path(*path.parts[-2:]))


# --- which models by default -------------------------------------------------------------------


def final_val_acc(ckpt: dict) -> float:
    """The last epoch's validation accuracy; -inf when there is none (no validation split)."""
    try:
        value = float(ckpt["metrics"][-1]["val_acc"])
    except (IndexError, KeyError, TypeError, ValueError):
        return -math.inf
    return value if math.isfinite(value) else -math.inf


def family(model_name: str) -> str | None:
    return MODELS[model_name].family if model_name in MODELS else None


def best_per_family(checkpoints: Iterable[Path], key: Callable[[Path, dict], tuple], log) -> list[Path]:
    """Per family, the MNIST checkpoint with the largest `key(path, checkpoint)`; unreadable ones are skipped."""
    best: dict[str, tuple[tuple, Path]] = {}
    for path in checkpoints:
        try:
            ckpt = load_checkpoint(path)
        except UserError as e:  # a damaged file (load_checkpoint turns any failure into this) is skipped
            log(f"skipping {e}")
            continue
        f = family(ckpt["model_name"])
        if f is None or ckpt["config"].get("dataset", "mnist") != "mnist":
            continue
        k = key(path, ckpt)
        if f not in best or k > best[f][0]:
            best[f] = (k, path)
    return [best[f][1].parent for f in FAMILIES if f in best]


def default_model_paths(root: Path = Path("."), log=print) -> list[Path]:
    """The best LeNet-5 and the best MLP (final val_acc) of the latest study under root/reports/;
    without one, the newest LeNet-5 and MLP runs under root/runs/."""

    def study_time(study: Path) -> float:
        results = study / "results.json"
        stamps = [p.stat().st_mtime for p in (results, *study.glob("runs/*/" + CHECKPOINT_NAME)) if p.exists()]
        return max(stamps, default=0.0)

    for study in sorted((root / "reports").glob("*/"), key=study_time, reverse=True):
        chosen = best_per_family(
            study.glob("runs/*/" + CHECKPOINT_NAME), lambda p, ckpt: (final_val_acc(ckpt), p.stat().st_mtime), log
        )
        if chosen:
            return chosen
    return best_per_family((root / "runs").glob("*/" + CHECKPOINT_NAME), lambda p, ckpt: (p.stat().st_mtime,), log)


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What clients can take from the server. Preprocessing holds about 20 bytes per pixel at
    its peak (320 MB for a 4096x4096 RGBA PNG), so the default budget, one such image plus a
    dozen drawings, keeps the server under 1 GB however many arrive at once."""

    timeout: float = 20.0  # seconds a connection may stay idle, and a request may take to arrive whole
    connections: int = 512  # open at once (fewer under a low limit of open files); when full, the oldest waiting goes
    handlers: int = 8  # threads that answer whole requests
    pixels_per_request: int = MAX_SIDE * MAX_SIDE  # an image with more pixels gets 413
    pixels_in_flight: int = MAX_SIDE * MAX_SIDE + 1_000_000  # decoded at once, over all requests
    decode_wait: float = 5.0  # seconds a request waits for room in that budget before it gets 503
    decoders: int = 2  # threads that decode, so that the memory one decode frees is reused by the next

    def __post_init__(self):
        if not (
            self.timeout > 0
            and self.decode_wait >= 0
            and self.decoders >= 1
            and self.handlers >= 1
            and self.connections >= 1
        ):
            raise ValueError(f"need timeout > 0, decode_wait >= 0 and decoders, handlers, connections >= 1 ({self})")
        if not 0 < self.pixels_per_request <= self.pixels_in_flight:
            raise ValueError(f"need 0 < pixels_per_request <= pixels_in_flight ({self})")


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class DecodeBudget:
    """A counting semaphore over decoded pixels: a drawing (280x280) almost never waits, while
    large photos take turns."""

    def __init__(self, pixels: int, wait: float):
        self.capacity, self.wait, self.used = pixels, wait, 0
        self._room = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        with self._room:
            if not self._room.wait_for(lambda: self.used + pixels <= self.capacity, timeout=self.wait):
                raise RequestError(
                    503, "busy decoding other images: try again in a moment", {"Retry-After": str(RETRY_AFTER)}
                )
            self.used += pixels
        try:
            yield
        finally:
            with self._room:
                self.used -= pixels
                self._room.notify_all()


def declared_pixels(data: bytes) -> int:
    """Width x height from the image's header, read without decoding the pixels; 0 when the
    header cannot be read (decode_image then fails as quickly, and says why)."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            return image.width * image.height
    except Exception:  # any failure here is decode_image's to report
        return 0


class TestDigits:
    """The test set behind the "try a test digit" button, loaded on first use (a failure is retried)."""

    def __init__(self, load: Callable[[], tuple[np.ndarray, np.ndarray]]):
        self._load, self._lock, self._arrays = load, threading.Lock(), None

    def get(self) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if self._arrays is None:
                self._arrays = self._load()
            return self._arrays


def test_set_loader(dataset: str = "mnist", data_dir=None, log=print) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    def load():
        try:
            data = load_dataset(dataset, data_dir, log=lambda line: None, download=False)
        except UserError as e:
            log(f"test digits: {e}")
            command = "mnistlab data" + ("" if dataset == "mnist" else f" --dataset {dataset}")
            raise UserError(f"the {dataset} test set is not prepared yet: run `{command}` first") from None
        return data.test_images, data.test_labels

    return load


class DigitServer(HTTPServer):
    request_queue_size = 64  # connections waiting to be accepted; socketserver's 5 reset some of a burst of 32

    def __init__(
        self,
        address,
        models: list[ServedModel],
        test_digits: TestDigits,
        log,
        limits: Limits,
        study: dict | None = None,
    ):
        self.models, self.test_digits, self.log, self.limits = models, test_digits, log, limits
        self.study = study or {"results": None, "robustness": None}
        self.decodes = DecodeBudget(limits.pixels_in_flight, limits.decode_wait)
        # Each thread that allocates gets its own malloc arena, which keeps what it freed: large
        # images decoded on every handler thread would leave a decode's worth of memory in each.
        self.decoders = ThreadPoolExecutor(limits.decoders, thread_name_prefix="decode")
        self.room = None
        super().__init__(address, Handler)
        self.room = WaitingRoom(
            limits.timeout, limits.connections, limits.handlers, MAX_BODY, self.answer, self.refuse, log
        )

    def get_request(self):
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):  # out of files: free one, rather than spin on accept
                self.room.make_room()
                time.sleep(0.05)
            raise

    def process_request(self, request, client_address):
        self.room.add(Connection(request, client_address))  # no thread: the waiting room reads it

    def answer(self, connection: Connection) -> bool:
        """Answer the whole request that `connection` holds; whether the connection stays open for another."""
        try:
            handler = Handler(connection, connection.address, self)
        except Exception as e:  # noqa: BLE001 - a bug in one answer must not stop the server
            self.log("".join(traceback.format_exception(e)).rstrip())
            return False
        return not handler.close_connection and not handler.rfile.ended

    def refuse(self, connection: Connection, status: int) -> None:
        """Answer a request the waiting room could not read whole (its head is too long), and close."""
        message = {414: "request line too long", 431: "request headers too long"}.get(status, HTTPStatus(status).phrase)
        body = json.dumps({"error": message}).encode()
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            connection.sock.settimeout(1.0)
            connection.sock.sendall(head.encode() + body)
        except OSError:
            pass
        finally:
            connection.sock.close()

    def server_close(self):
        super().server_close()
        if self.room is not None:  # None when binding failed
            self.room.close()
        self.decoders.shutdown(wait=False, cancel_futures=True)

    def serves_host(self, host: str | None) -> bool:
        """Whether a request's Host header names this server: its own address, or localhost, with its port."""
        if not host:
            return False
        name, port = split_host(host)
        if port is not None and port != self.server_address[1]:
            return False
        if name in LOCAL_NAMES or name == self.server_address[0]:
            return True
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            return False  # a DNS name other than localhost: a page elsewhere, rebound to this address
        return ipaddress.ip_address(self.server_address[0]).is_unspecified and not ip.is_multicast

    def handle_error(self, request, client_address):
        """socketserver would print a traceback on stderr; a client that hung up gets one line."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            self.log(f"{client_address[0]} {dropped(error)}")
        else:
            self.log("".join(traceback.format_exception(error)).rstrip())

    def predictions(self, image: np.ndarray, move: tuple[int, int, float] = (0, 0, 0.0), inside: bool = False) -> dict:
        """What the page shows for one 28x28 uint8 image, moved by (dx, dy, angle) before the
        models see it: every model's probabilities, and with `inside` its layers."""
        moved = move_images(torch.from_numpy(image), *move).numpy()
        predictions = []
        for m in self.models:
            p = predict_probabilities(m.model, moved[None])[0]
            predictions.append(
                {"name": m.name, "digit": int(p.argmax()), "probabilities": [round(float(x), 6) for x in p]}
            )
            if inside:
                predictions[-1]["inside"] = look_inside(m.model, moved)
        return {
            "preprocessed": image.tolist(),
            "blank": not image.any(),
            "move": dict(zip(("dx", "dy", "angle"), move)),
            "model_input": moved.tolist(),
            "predictions": predictions,
        }


def make_server(
    models: list[ServedModel],
    host: str = "127.0.0.1",
    port: int = 8000,
    test_set: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    log=print,
    limits: Limits = Limits(),
    study: dict | None = None,
) -> DigitServer:
    """A server bound to host:port (0: any free port), not yet serving: call `serve_forever()`.

    `test_set` returns (images uint8 (N, 28, 28), labels); by default MNIST's test set from
    the data directory, never downloaded. `log` gets one line per failed request (None: quiet).
    `study` is what /api/models says about the study (`study_summary`).
    """
    log = log or (lambda line: None)
    try:
        return DigitServer(
            (host, port), list(models), TestDigits(test_set or test_set_loader(log=log)), log, limits, study
        )
    except OverflowError:  # socket's own check of the port number
        raise UserError(f"cannot listen on {host}:{port} (the port must be 0..65535)") from None
    except OSError as e:
        in_use = e.errno == errno.EADDRINUSE
        hint = "; another program uses it: choose another --port, or 0 for any free one" if in_use else ""
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}{hint})") from None


def split_host(host: str) -> tuple[str, int | None]:
    """(name, port) from a Host header ("localhost:8000", "[::1]:8000", "127.0.0.1"); port None when
    there is none, -1 when it is not a port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    if not port:
        return name, None
    return name, int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else -1


def dropped(error: BaseException) -> str:
    """The log line for a connection that ended mid-request."""
    if isinstance(error, TimeoutError):
        return "connection closed: the client went quiet mid-request"
    return f"connection closed by the client ({type(error).__name__})"


class Handler(BaseHTTPRequestHandler):
    server: DigitServer
    server_version = "mnistlab"
    protocol_version = "HTTP/1.1"

    request: Connection  # one whole request, read by the waiting room (connections.py)

    def setup(self):
        sock = self.request.sock
        sock.settimeout(self.server.limits.timeout)  # for writing the answer
        self.connection = sock
        timeout = self.server.limits.timeout
        self.rfile = RequestReader(self.request, self.request.deadline(timeout), timeout)
        self.wfile = SocketWriter(sock)

    def handle(self):
        self.close_connection = True  # unless the request asks to keep it open (HTTP/1.1)
        self.handle_one_request()  # the next request, if any, comes back through the waiting room

    def finish(self):
        pass

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (a bad request line, a line or headers too long, an unknown
        method) as JSON, like every other answer."""
        self.close_connection = True
        if self.request_version not in ("HTTP/1.0", "HTTP/1.1"):  # unreadable: still a status line and headers
            self.request_version = self.protocol_version
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_OPTIONS(self):
        self.dispatch("OPTIONS")

    def do_TRACE(self):
        self.dispatch("TRACE")

    def dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        method = "GET" if method == "HEAD" else method  # send_bytes leaves the body out
        routes = {
            "/api/models": ("GET", self.models),
            "/api/predict": ("POST", lambda: self.predict(parse_qs(url.query))),
            "/api/test-digit": ("GET", lambda: self.test_digit(parse_qs(url.query))),
        }
        try:
            hosts = self.headers.get_all("Host", [])
            if len(hosts) != 1 or not self.server.serves_host(hosts[0]):
                raise RequestError(
                    403,
                    f"this server answers requests for {self.own_address()} or localhost "
                    f"only, not for Host {str(self.headers.get('Host'))[:100]!r}",
                )
            if url.path in STATIC and method == "GET":
                return self.send_static(*STATIC[url.path])
            if url.path not in routes and url.path not in STATIC:
                raise RequestError(404, f"no such page: {url.path}")
            allowed, answer = routes.get(url.path, ("GET", None))
            if method != allowed:
                allow = "GET, HEAD" if allowed == "GET" else allowed
                raise RequestError(405, f"{url.path} takes {allowed} only", {"Allow": allow})
            self.send_json(200, answer())
        except RequestError as e:
            self.close_connection = True  # the body may be unread
            self.send_json(e.status, {"error": str(e)}, e.headers)
        except (ConnectionError, TimeoutError) as e:  # the client hung up or went quiet: nobody to answer
            self.close_connection = True
            self.log_message("%s", dropped(e))
        except Exception as e:  # a bug: say so to the client and in the log, keep serving
            self.server.log("".join(traceback.format_exception(e)).rstrip())
            self.close_connection = True
            self.send_json(500, {"error": f"internal error ({type(e).__name__}); see the server's log"})

    # --- routes --------------------------------------------------------------------------------

    def own_address(self) -> str:
        host, port = self.server.server_address[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def models(self) -> dict:
        return {
            "models": [m.describe() for m in self.server.models],
            "help": None if self.server.models else NO_MODEL_HELP,
            "study": self.server.study,
        }

    def predict(self, query: dict) -> dict:
        move, inside = view_options(query)
        data = self.read_image_bytes()
        pixels = declared_pixels(data)
        limit = self.server.limits.pixels_per_request
        if pixels > limit:
            raise RequestError(413, f"image too large ({pixels:,} pixels; this server takes up to {limit:,})")
        with self.server.decodes.reserve(pixels):
            image = self.server.decoders.submit(lambda: to_mnist(decode(data))).result()
        return self.server.predictions(image, move, inside)

    def test_digit(self, query: dict) -> dict:
        move, inside = view_options(query)
        try:
            images, labels = self.server.test_digits.get()
        except UserError as e:
            raise RequestError(503, str(e)) from None
        if "index" in query:
            try:
                index = int(query["index"][0])
            except ValueError:
                raise RequestError(400, "index must be a whole number") from None
            if not 0 <= index < len(labels):
                raise RequestError(400, f"index must be in 0..{len(labels) - 1}")
        else:
            index = random.randrange(len(labels))
        # A test image is already in MNIST's form: the models get it as it is.
        return {"index": index, "label": int(labels[index]), **self.server.predictions(images[index], move, inside)}

    # --- requests and answers ------------------------------------------------------------------

    def read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "send the body with a Content-Length, not chunked")
        values = self.headers.get_all("Content-Length", [])
        if not values:
            raise RequestError(411, "a Content-Length header is required")
        value = values[0].strip()
        if len(set(values)) > 1 or not (value.isascii() and value.isdigit()):  # not "1e20", "-1", "+5", "0x10"
            raise RequestError(400, f"invalid Content-Length: {', '.join(values)[:40]!r}")
        length = int(value) if len(value) <= 18 else MAX_DRAIN + 1  # int() refuses over 4,300 digits
        if length > MAX_BODY:
            if length <= MAX_DRAIN:
                self.drain(length)  # so that the client, still sending, sees the 413
            raise RequestError(413, f"body too large (the limit is {MAX_BODY:,} bytes)")
        body = self.rfile.read(length)
        if len(body) < length:
            raise RequestError(400, "body shorter than its Content-Length")
        return body

    def drain(self, length: int) -> None:
        left = min(length, MAX_DRAIN)
        while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
            left -= len(chunk)

    def read_image_bytes(self) -> bytes:
        kind = self.headers.get_content_type()
        if "Content-Type" not in self.headers or kind not in IMAGE_TYPES:
            given = self.headers.get("Content-Type", "none")[:60]
            raise RequestError(
                415,
                f"send a PNG or JPEG image (Content-Type image/png or image/jpeg) or JSON "
                f"(application/json), not Content-Type {given!r}",
            )
        body = self.read_body()
        if not body:
            raise RequestError(
                400, 'empty body: send a PNG or JPEG image, or JSON {"image": "data:image/png;base64,..."}'
            )
        if self.headers.get_content_type() == "application/json":
            body = image_bytes_from_json(body)
        return body

    def send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self.send_bytes(status, json.dumps(payload).encode(), "application/json", headers)

    def send_static(self, name: str, content_type: str) -> None:
        self.send_bytes(200, (resources.files("mnistlab") / "static" / name).read_bytes(), content_type)

    def send_bytes(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", PAGE_POLICY)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        if isinstance(code, int) and code >= 400:  # successful requests are not worth a line each
            super().log_request(code, size)

    def log_message(self, format, *args):
        self.server.log(f"{self.address_string()} {format % args}")


def decode(data: bytes):
    """decode_image, its errors as the answers a client gets."""
    try:
        return decode_image(data, "image")
    except ImageTooLarge as e:
        raise RequestError(413, str(e)) from None
    except UserError as e:
        raise RequestError(400, str(e)) from None


def view_options(query: dict) -> tuple[tuple[int, int, float], bool]:
    """((dx, dy, angle), inside) from a request's query: ?dx=&dy= whole pixels, ?angle= degrees, ?inside=0|1."""

    def number(key: str, kind: type, limit: int):
        try:
            value = kind(query.get(key, ["0"])[0])
        except ValueError:
            raise RequestError(400, f"{key} must be a {'whole number' if kind is int else 'number'}") from None
        if not abs(value) <= limit:  # not NaN either
            raise RequestError(400, f"{key} must be in -{limit}..{limit}")
        return value

    move = (number("dx", int, MAX_SHIFT), number("dy", int, MAX_SHIFT), number("angle", float, MAX_ANGLE))
    inside = query.get("inside", ["0"])[0]
    if inside not in ("0", "1"):
        raise RequestError(400, "inside must be 0 or 1")
    return move, inside == "1"


def study_summary(results: Path | None) -> dict:
    """What /api/models says about the study whose results.json is `results` (which may not exist; None: no study)."""
    if results is None:
        return {"results": None, "robustness": None}
    return {"results": shown_path(results) if results.is_file() else None, "robustness": read_robustness(results)}


def image_bytes_from_json(body: bytes) -> bytes:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RequestError(400, "malformed JSON") from None
    except RecursionError:
        raise RequestError(400, "JSON nested too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
        raise RequestError(400, 'JSON must be an object {"image": "data:image/png;base64,..."}')
    text = payload["image"]
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise RequestError(400, "the image must be a base64 data URL (data:image/png;base64,...)")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the image is not valid base64") from None
