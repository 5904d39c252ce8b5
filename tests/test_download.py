"""The network sources (download.py): the unpickler that admits numpy arrays only, and name lookups
that hang or fail. Nothing here reaches the network; the sources in use are tested in test_data.py."""

from __future__ import annotations

import io
import pickle
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from mnistlab import download
from mnistlab.download import read_array_pickle
from mnistlab.errors import UserError


@pytest.mark.parametrize("module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_array_pickle_is_accepted(module):
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64))
    payload = pickle.dumps(arrays, protocol=3).replace(b"numpy._core.multiarray", module.encode())
    loaded = read_array_pickle(io.BytesIO(payload), "test.pkl")
    for got, want in zip(loaded, arrays):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_inexact_pickled_pixels_are_refused():
    with pytest.raises(UserError, match="multiples of 1/256"):
        download._pixels(np.full((1, 784), 0.3, np.float32), "x.pkl")


def test_a_name_lookup_that_hangs_times_out(monkeypatch):
    release = threading.Event()

    def hanging_lookup(*args, **kwargs):
        release.wait(30)
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    def urlopen(*args, **kwargs):
        raise AssertionError("urlopen called after the name lookup failed")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    start = time.perf_counter()
    try:
        with pytest.raises(urllib.error.URLError) as caught:
            download._fetch("https://mirror.invalid/train-images-idx3-ubyte.gz", 0.2)
    finally:
        release.set()
    assert time.perf_counter() - start < 5
    assert (
        download._network_error(caught.value)
        == "connection failed (name lookup of mirror.invalid timed out after 0.2 s)"
    )


def test_a_failed_name_lookup_is_reported_as_such(monkeypatch):
    def failing_lookup(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", failing_lookup)
    with pytest.raises(urllib.error.URLError) as caught:
        download._fetch("https://mirror.invalid/train-images-idx3-ubyte.gz", 5)
    assert download._network_error(caught.value) == "connection failed (Name or service not known)"
