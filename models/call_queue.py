"""One worker thread serving blocking callers from a queue: the shared part of the decoder
batcher (models/batching.py) and the generation batcher (models/llm_batching.py)."""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from typing import Any, Callable, Protocol

from .acceleration import prepare_thread_for_cuda_graphs
from .generate import GenerationCancelled


class Call(Protocol):
    future: Future
    should_stop: Callable[[], bool] | None


def cancelled(call: Call) -> bool:
    return call.should_stop is not None and call.should_stop()


class CallQueue:
    """Callers block in `_submit` until the worker (`_loop`, a subclass's) answers their future.
    A caller whose `should_stop` turns true is answered at once with GenerationCancelled, and
    taken out of the queue if its call is still waiting; a running one is the worker's to drop."""

    POLL_S = 0.05  # how often a waiting caller checks its should_stop

    def __init__(self, name: str, start: bool = True):
        self._pending: deque = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=name, daemon=True)
        if start:
            self._worker.start()

    def start(self) -> None:
        self._worker.start()

    def _serve(self) -> None:
        prepare_thread_for_cuda_graphs()  # the worker may run CUDA-graphed compiled code
        self._loop()

    def _loop(self) -> None:
        raise NotImplementedError

    def _has_work(self) -> bool:
        """Called with the lock held."""
        return bool(self._pending)

    def _wait_for_work(self) -> bool:
        """Block until there is work (True) or the queue is closed (False)."""
        with self._cv:
            while not self._has_work() and not self._closed:
                self._cv.wait()
            return not self._closed

    @property
    def queue_depth(self) -> int:
        with self._cv:
            return len(self._pending)

    def _submit(self, call: Call) -> Any:
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self._worker.name} is closed")
            self._pending.append(call)
            self._cv.notify()
        while True:
            try:
                return call.future.result(timeout=self.POLL_S)
            except TimeoutError:
                if cancelled(call):
                    self._withdraw(call)
                    raise GenerationCancelled() from None

    def _withdraw(self, call: Call) -> None:
        with self._cv:
            if call in self._pending:
                self._pending.remove(call)

    def _stop_worker(self, timeout: float) -> list:
        """Stop taking work and wait (bounded) for the worker; the calls it never took."""
        with self._cv:
            self._closed = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cv.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)
        return waiting
