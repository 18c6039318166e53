"""The engine loop: the one caller of the session, feeding every client's tokens through its own queue.

A :class:`Session` is single-threaded, so one asyncio task owns it. HTTP handlers never touch the session:
:meth:`EngineLoop.generate` queues the request and awaits tokens on an ``asyncio.Queue`` of its own; the
loop applies queued submits and cancels between steps, runs ``session.step()`` on a worker thread (the
backend releases the GIL, so the event loop keeps serving connections meanwhile) and hands each token
to its request's queue. All sequences share the steps (continuous batching across connections). A
handler that stops listening (its client went away) cancels its request, which frees the slot.
This is the shape of vLLM's engine client: one background loop, per-request queues, abort on disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from jrtc.errors import JrtcError
from jrtc.runtime.prompt import Prompt
from jrtc.runtime.sampling import SamplingParams
from jrtc.runtime.serve.metrics import Metrics
from jrtc.runtime.session import Request, Session, Token

log = logging.getLogger("jrtc.serve")


class QueueFull(Exception):
    """More requests wait for a slot than the server's ``max_queue``: the client should retry later (429)."""


class EngineStopped(Exception):
    """The server shut down before the request finished (503)."""


@dataclass
class _Client:
    """A request's channel back to its handler, and when it was admitted (for the latency metrics)."""

    admitted: float
    tokens: asyncio.Queue[Token | BaseException] = field(default_factory=asyncio.Queue)
    started: bool = False  # it has its first token, so it holds a slot (or is done)


def state_pool_bytes(session: Session) -> int:
    """Bytes of the session's state pool (on the backend's device): every slot's state tensors."""
    return session.state_bytes * session.max_batch


class EngineLoop:
    """Drives one session for all clients; create and :meth:`start` it inside the server's event loop."""

    def __init__(self, session: Session, max_queue: int) -> None:
        self.session = session
        self.max_queue = max_queue
        self.metrics = Metrics(state_pool_bytes(session), session.max_batch)
        self._clients: dict[Request, _Client] = {}
        self._to_submit: list[Request] = []
        self._to_cancel: list[Request] = []
        self._wake = asyncio.Event()
        # One thread: the session sees a single caller even though the loop awaits each step.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jrtc-engine")
        self._task: asyncio.Task[None] | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    @property
    def waiting(self) -> int:
        """Admitted requests without a slot yet (the queue that ``max_queue`` bounds)."""
        return sum(not client.started for client in self._clients.values())

    @property
    def active(self) -> int:
        return len(self._clients) - self.waiting

    def start(self) -> None:
        self._event_loop = asyncio.get_running_loop()
        self._task = self._event_loop.create_task(self._run(), name="jrtc-engine-loop")

    def drain_threadsafe(self, timeout: float) -> None:
        """Begin a graceful shutdown (callable from a signal handler or another thread): admit nothing
        more, let running sequences finish for ``timeout`` seconds, then cancel the rest; their clients
        get :class:`EngineStopped`, so every response still ends properly."""
        assert self._event_loop is not None, "the loop has not started"
        self._event_loop.call_soon_threadsafe(self._drain, timeout)

    def _drain(self, timeout: float) -> None:
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_later(timeout, self._stop_all)

    def _stop_all(self) -> None:
        for request, client in self._clients.items():
            if request in self._to_submit:
                self._to_submit.remove(request)
            else:
                self._to_cancel.append(request)
            self.metrics.requests.labels("cancelled").inc()
            client.tokens.put_nowait(EngineStopped("the server shut down before this request finished"))
        self._wake.set()

    async def stop(self) -> None:
        """Cancel what still runs, let the current step end, and stop; open handlers get EngineStopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # A step running when the task was cancelled ends on the worker thread before the session is touched.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        for request, client in self._clients.items():
            self.session.cancel(request)
            client.tokens.put_nowait(EngineStopped("the server is shutting down"))

    def request(self, prompt: str | Prompt | Sequence[int], params: SamplingParams) -> Request:
        """Tokenize a prompt into a request (pure: it does not touch the session's state)."""
        return self.session.request(prompt, params)

    async def generate(self, request: Request) -> AsyncGenerator[Token, None]:
        """Admit ``request`` and yield its tokens; leaving early (close, cancellation) cancels it.

        Raises :class:`QueueFull` at once when every slot is taken and ``max_queue`` requests wait, and the
        session's :class:`JrtcError` for a request it refuses.
        """
        if self._draining:
            raise EngineStopped("the server is shutting down")
        # Free slots take waiting requests at the next step, so the queue is full at this many.
        if len(self._clients) >= self.session.max_batch + self.max_queue:
            self.metrics.requests.labels("rejected").inc()
            raise QueueFull(
                f"no free slot ({self.active} of {self.session.max_batch} busy) and {self.waiting} requests "
                f"already waiting (--max-queue {self.max_queue}); retry later"
            )
        client = self._clients[request] = _Client(time.perf_counter())
        self._to_submit.append(request)
        self._wake.set()
        finished = False
        try:
            while True:
                item = await client.tokens.get()
                if isinstance(item, BaseException):
                    finished = True  # refused, failed or stopped: nothing (more) to cancel
                    raise item
                # Set before the yield: a consumer may stop at the last token, which is no cancel.
                finished = item.finish_reason is not None
                yield item
                if finished:
                    return
        finally:
            del self._clients[request]
            if not finished:
                self.metrics.requests.labels("cancelled").inc()
                if request in self._to_submit:
                    self._to_submit.remove(request)
                else:
                    self._to_cancel.append(request)
                    self._wake.set()
            self._update_gauges()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._apply_queued()
            if not self.session.busy:
                self.metrics.record_idle()
                self._wake.clear()
                await self._wake.wait()
                continue
            started = time.perf_counter()
            try:
                tokens = await loop.run_in_executor(self._executor, self.session.step)
            except Exception as exc:  # a failed step fails the requests in it, not the server
                log.exception("engine step failed")
                self._fail_all(exc)
                continue
            self._deliver(tokens, started, time.perf_counter())

    def _apply_queued(self) -> None:
        cancels, self._to_cancel = self._to_cancel, []
        for request in cancels:
            self.session.cancel(request)
        submits, self._to_submit = self._to_submit, []
        for request in submits:
            try:
                self.session.submit(request)
            except JrtcError as exc:  # the handler answers 400 (and counts it)
                self._clients[request].tokens.put_nowait(exc)
            else:
                self.metrics.prompt_tokens.inc(len(request.prompt))
        self._update_gauges()

    def _deliver(self, tokens: list[Token], started: float, ended: float) -> None:
        first_tokens = 0
        for token in tokens:
            request = token.request
            client = self._clients.get(request)
            if client is None:  # its client left during the step; the cancel is queued
                continue
            if not client.started:
                client.started = True
                first_tokens += 1
                self.metrics.time_to_first_token.observe(ended - client.admitted)
                self.metrics.prefill.observe(request.stats.prefill_ms / 1e3)
            if token.finish_reason is not None:
                self.metrics.requests.labels(token.finish_reason).inc()
                self.metrics.request_seconds.observe(ended - client.admitted)
            client.tokens.put_nowait(token)
        self.metrics.record_step(started, ended, len(tokens), decode_only=first_tokens == 0)
        self._update_gauges()

    def _fail_all(self, exc: Exception) -> None:
        """Fail the requests in the session (not those admitted during the failed step)."""
        for request, client in self._clients.items():
            if request in self._to_submit:
                continue
            self.session.cancel(request)
            self.metrics.requests.labels("failed").inc()
            client.tokens.put_nowait(exc)

    def _update_gauges(self) -> None:
        waiting = self.waiting
        self.metrics.queue_depth.set(waiting)
        self.metrics.active_sequences.set(len(self._clients) - waiting)
