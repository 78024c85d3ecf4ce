"""``PredictionFiles`` writes predict batches on a background thread: in order, at most
``max_pending`` batches waiting, a writer's error raised in the main thread, nothing lost at the end."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from vitp.callbacks import PredictionFiles


class _Recorder:
    def __init__(self, fail_at: int | None = None) -> None:
        self.written: list[int] = []
        self.threads: set[str] = set()
        self.fail_at = fail_at

    def write(self, pred: int, target: object) -> None:
        time.sleep(0.01)
        if pred == self.fail_at:
            raise OSError(f"disk full while writing image {pred}")
        self.written.append(pred)
        self.threads.add(threading.current_thread().name)


def _callback(recorder: _Recorder, background: bool = True) -> PredictionFiles:
    cb = PredictionFiles(background=background, max_pending=2)
    cb._writers = [recorder]
    if background:
        from concurrent.futures import ThreadPoolExecutor
        cb._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitp-writer")
    return cb


def _batch(i: int) -> SimpleNamespace:
    return SimpleNamespace(targets=[None, None])


@pytest.mark.parametrize("background", [True, False])
def test_batches_written_in_order_and_all_by_the_end(background: bool):
    recorder = _Recorder()
    cb = _callback(recorder, background)
    for i in range(6):
        cb._submit([2 * i, 2 * i + 1], _batch(i))
        assert len(cb._pending) <= 2
    cb._drain()
    assert recorder.written == list(range(12))
    assert recorder.threads == ({"vitp-writer_0"} if background else {threading.current_thread().name})
    assert cb._pool is None and cb._pending == []


def test_one_batch_written_while_the_next_is_predicted_by_default():
    recorder = _Recorder()
    cb = PredictionFiles()
    assert cb.background and cb.max_pending == 1
    cb._writers = [recorder]
    from concurrent.futures import ThreadPoolExecutor
    cb._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vitp-writer")
    for i in range(4):
        cb._submit([i], _batch(i))
        assert len(cb._pending) == 1  # the previous batch was finished before this one was queued
    cb._drain()
    assert recorder.written == [0, 1, 2, 3]


def test_a_failing_prediction_still_leaves_the_predicted_batches_written():
    recorder = _Recorder()
    cb = _callback(recorder)
    for i in range(3):
        cb._submit([2 * i, 2 * i + 1], _batch(i))
    cb.on_exception(None, None, RuntimeError("the model failed on the next batch"))
    assert recorder.written == list(range(6)) and cb._pool is None


def test_a_writer_error_reaches_the_main_thread():
    cb = _callback(_Recorder(fail_at=3))
    with pytest.raises(OSError, match="image 3"):
        for i in range(6):
            cb._submit([2 * i, 2 * i + 1], _batch(i))
        cb._drain()
    cb.on_exception(None, None, OSError())
    assert cb._pool is None
