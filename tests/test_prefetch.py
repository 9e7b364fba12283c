"""Background decoding of the next batch: same predictions and errors in the same order as
decoding one image at a time, bounded to two batches, and actually overlapped with the model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import make_photo
from geofast import images as gi
from geofast.predict.geoclip import predict_in_batches
from geofast.predict.types import Prediction


def _files(tmp_path, n):
    paths = []
    for i in range(n):
        p = tmp_path / f"p{i:03d}.jpg"
        if i % 7 == 3:
            p.write_bytes(b"not a jpeg")
        elif i % 11 == 5:
            p = tmp_path / f"missing{i}.jpg"
        else:
            make_photo(p, seed=i, size=(64 + i, 48))
        paths.append(str(p))
    return paths


def _describe(names, ims):
    # A per-image answer that depends on the decoded pixels.
    return [Prediction(image=n, lat=float(np.asarray(im).mean()), lon=float(im.size[0]), method="t") for n, im in zip(names, ims)]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_same_predictions_and_errors_as_sequential_decoding(tmp_path, threads, batch_size):
    paths = _files(tmp_path, 30)
    ref = []
    for i, name, im, err in gi.iter_loaded(paths):
        ref.append(_describe([name], [im])[0] if im is not None else Prediction(image=name, method="t", error=str(err)))
    got = predict_in_batches(paths, batch_size, "t", _describe, loader_threads=threads)
    assert got == ref
    assert sum(p.error is not None for p in got) >= 5


def test_at_most_two_batches_are_decoded_at_a_time(tmp_path, monkeypatch):
    paths = _files(tmp_path, 40)
    decoded = []
    lock = threading.Lock()
    real = gi.load_image

    def counting(x, **kw):
        out = real(x, **kw)
        with lock:
            decoded.append(x)
        return out

    monkeypatch.setattr(gi, "load_image", counting)
    batch = 5
    seen = []

    def model(names, ims):
        time.sleep(0.02)  # let the decoder run ahead as far as it can
        with lock:
            seen.append(len(decoded))
        return _describe(names, ims)

    batches = []
    progress = []
    predict_in_batches(paths, batch, "t", lambda n, i: (batches.append(1), model(n, i))[1], progress.append, loader_threads=4)
    # While the model works on batch k, only batches k and k + 1 may have been decoded.
    for k, count in enumerate(seen):
        assert count <= (k + 2) * batch
    assert sum(progress) == 40


def test_decoding_overlaps_the_model(monkeypatch):
    """Events, not wall time: while the model works on batch k, the decoder starts batch k + 1.
    The model waits (up to 10 s) for that event; decoding only between model calls never sends
    it, so each batch's wait times out and the check fails."""
    from PIL import Image

    items = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(24)]
    real = gi.load_image
    started: list[int] = []
    cond = threading.Condition()

    def counting(x, **kw):
        with cond:
            started.append(1)
            cond.notify_all()
        return real(x, **kw)

    monkeypatch.setattr(gi, "load_image", counting)
    overlapped: list[bool] = []

    def model(names, ims):
        k = len(overlapped)
        first_of_next = min((k + 1) * 4 + 1, len(items))  # decode calls up to the next batch's first
        with cond:
            overlapped.append(cond.wait_for(lambda: len(started) >= first_of_next, timeout=10.0))
        return _describe(names, ims)

    out = predict_in_batches(items, 4, "t", model, loader_threads=1)
    assert [p.lat for p in out] == [float(np.asarray(im).mean()) for im in items]
    assert overlapped == [True] * 6


def test_early_stop_cancels_pending_decoding(tmp_path):
    paths = _files(tmp_path, 40)
    it = gi.iter_loaded_batches(paths, 4, threads=2)
    first = next(it)
    assert [x[0] for x in first] == [0, 1, 2, 3]
    it.close()  # must not hang nor raise
