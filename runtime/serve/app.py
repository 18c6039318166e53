"""The HTTP app: thin routes over the engine loop, and the uvicorn server that ``jrtc serve`` runs.

``build_app`` makes the FastAPI app; its lifespan opens the session and starts the engine loop, so the
same app object serves one process (``run_server``) or each Ray Serve replica (``ray_serve.py``), every
replica then with its own engine and state pool. Routes: ``POST /v1/completions`` (JSON, or server-sent
events with ``stream``), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request as HttpRequest
from starlette.types import Receive, Scope, Send

from jrtc.errors import JrtcError
from jrtc.runtime.serve.loop import EngineLoop, EngineStopped, QueueFull
from jrtc.runtime.serve.protocol import (
    FINISH_REASONS,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
)
from jrtc.runtime.session import Request, Session, Token

T = TypeVar("T")
# Which process answered: with Ray Serve, the replica that holds the sequence.
REPLICA_HEADER = "x-jrtc-replica"
CLIENT_CLOSED = 499  # nginx's status for a request whose client left; nobody reads it
SHUTDOWN_GRACE_S = 10.0  # past the drain, for the last responses to reach their clients

router = APIRouter()


def _engine_loop(http: HttpRequest) -> EngineLoop:
    return http.app.state.engine_loop


def _replica() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@router.post("/v1/completions", response_model=Completion)
async def completions(body: CompletionRequest, http: HttpRequest) -> Response:
    loop = _engine_loop(http)
    request = loop.request(body.engine_prompt(), body.sampling_params())
    tokens = loop.generate(request)
    model = http.app.state.model_name
    headers = {REPLICA_HEADER: _replica()}
    if not body.stream:
        done = await _unless_disconnected(http, _collect(tokens))
        if done is None:
            return Response(status_code=CLIENT_CLOSED)
        ids, text, finish = done
        choice = CompletionChoice(
            text=text, finish_reason=finish, token_ids=ids if body.return_token_ids else None
        )
        completion = Completion(model=model, choices=[choice], usage=_usage(request))
        return JSONResponse(completion.model_dump(), headers=headers)
    # The first token decides the status: a refused request still gets its 400 or 429, not a broken stream.
    first = await _unless_disconnected(http, anext(tokens))
    if first is None:
        return Response(status_code=CLIENT_CLOSED)
    events = _events(first, tokens, request, body, model)
    return _EventStream(events, media_type="text/event-stream", headers=headers)


@router.get("/v1/models", response_model=ModelList)
async def models(http: HttpRequest) -> ModelList:
    return ModelList(data=[ModelCard(id=http.app.state.model_name, created=http.app.state.created)])


@router.get("/health")
async def health(http: HttpRequest) -> dict[str, Any]:
    loop = _engine_loop(http)
    return {
        "status": "ok",
        "model": http.app.state.model_name,
        "slots": loop.session.max_batch,
        "active": loop.active,
        "waiting": loop.waiting,
        "replica": _replica(),
    }


@router.get("/metrics")
async def metrics(http: HttpRequest) -> Response:
    return Response(_engine_loop(http).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _usage(request: Request) -> Usage:
    stats = request.stats
    return Usage(
        prompt_tokens=stats.prompt_tokens,
        completion_tokens=stats.generated_tokens,
        total_tokens=stats.prompt_tokens + stats.generated_tokens,
    )


async def _collect(tokens: AsyncGenerator[Token, None]) -> tuple[list[int], str, str | None]:
    ids, texts, finish = [], [], None
    async with aclosing(tokens):
        async for token in tokens:
            ids.append(token.id)
            texts.append(token.text)
            finish = FINISH_REASONS.get(token.finish_reason)
    return ids, "".join(texts), finish


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


async def _events(
    first: Token, tokens: AsyncGenerator[Token, None], request: Request, body: CompletionRequest, model: str
) -> AsyncIterator[str]:
    """One OpenAI completion chunk per token (its text may be empty: bytes of a character still to
    come), the usage chunk if asked for, then ``[DONE]``."""
    chunk = Completion(model=model, choices=[])  # one id and creation time for the whole stream
    async with aclosing(tokens):
        token = first
        try:
            while True:
                choice = CompletionChoice(
                    text=token.text,
                    finish_reason=FINISH_REASONS.get(token.finish_reason),
                    token_ids=[token.id] if body.return_token_ids else None,
                )
                yield _sse(chunk.model_copy(update={"choices": [choice]}).model_dump_json())
                if token.finish_reason is not None:
                    break
                token = await anext(tokens)
        except EngineStopped as exc:  # the stream ends with an error event, as OpenAI's do
            yield _sse(_error_body(str(exc), "server_error").model_dump_json())
            return
    if body.stream_options is not None and body.stream_options.include_usage:
        yield _sse(chunk.model_copy(update={"usage": _usage(request)}).model_dump_json())
    yield _sse("[DONE]")


class _EventStream(StreamingResponse):
    """A streaming response that closes its generator however the response ends, so a client that
    disconnects mid-stream cancels its sequence at once (not when the generator is garbage-collected)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


async def _disconnected(http: HttpRequest) -> None:
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(http: HttpRequest, work: Awaitable[T]) -> T | None:
    """The result of ``work``, or None if the client disconnects first (``work`` is then cancelled,
    which cancels its sequence). FastAPI does not cancel a handler whose client left; vLLM watches for
    the disconnect the same way."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        return None
    if not task.done():  # the client left: let the cancellation reach the sequence
        await asyncio.gather(task, return_exceptions=True)
        return None
    return task.result()


# ---- errors: one line each, in OpenAI's error body ------------------------------------------------------


def _error_body(message: str, kind: str, param: str | None = None) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param))


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(_error_body(message, kind, param).model_dump(), status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem of a request that does not fit :class:`CompletionRequest`, on one line."""
    error = exc.errors()[0]
    where = [str(part) for part in error["loc"][1:]]  # past "body"
    field = where[0] if where else None
    if error["type"] == "json_invalid":
        return "the request body is not valid JSON", None
    if error["type"] == "model_attributes_type":
        return "the request body must be a JSON object", None
    if error["type"] == "extra_forbidden":
        return f"unknown or unsupported field {field!r}", field
    if error["type"] == "missing":
        return f"{field} is required", field
    return f"{field}: {error['msg']}", field


def _count_invalid(http: HttpRequest) -> None:
    _engine_loop(http).metrics.requests.labels("invalid").inc()


async def _on_validation_error(http: HttpRequest, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count_invalid(http)
    message, field = _validation_message(exc)
    return _error(400, message, "invalid_request_error", field)


async def _on_jrtc_error(http: HttpRequest, exc: Exception) -> JSONResponse:
    _count_invalid(http)
    return _error(400, str(exc), "invalid_request_error")


async def _on_queue_full(http: HttpRequest, exc: Exception) -> JSONResponse:
    return _error(429, str(exc), "rate_limit_error")


async def _on_engine_stopped(http: HttpRequest, exc: Exception) -> JSONResponse:
    return _error(503, str(exc), "server_error")


def build_app(open_session: Callable[[], Session], max_queue: int, model_name: str) -> FastAPI:
    """The app over the session that ``open_session()`` returns when the app starts (in each process
    that runs it; the app object itself holds no engine, so Ray can ship it to its replicas)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = EngineLoop(open_session(), max_queue)
        loop.start()
        app.state.engine_loop = loop
        try:
            yield
        finally:
            await loop.stop()

    app = FastAPI(title="jrtc", lifespan=lifespan)
    app.state.model_name = model_name
    app.state.created = int(time.time())
    app.include_router(router)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(JrtcError, _on_jrtc_error)
    app.add_exception_handler(QueueFull, _on_queue_full)
    app.add_exception_handler(EngineStopped, _on_engine_stopped)
    return app


def model_name_of(engine_path: str | Path) -> str:
    """The engine directory's name (the path may name a file in it)."""
    path = Path(engine_path).resolve()
    return (path if path.is_dir() else path.parent).name


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise JrtcError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _ignore_signal(signum: int, frame: object) -> None:
    pass


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or Ctrl-C also starts the engine loop's drain: uvicorn stops
    accepting connections and waits for the open ones, while the loop lets running sequences finish
    for ``shutdown_timeout`` seconds and then ends the rest itself (rather than uvicorn cancelling
    their handlers mid-response)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI, shutdown_timeout: float) -> None:
        super().__init__(config)
        self._app, self._shutdown_timeout = app, shutdown_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = getattr(self._app.state, "engine_loop", None)
        if loop is not None and not self.should_exit:
            loop.drain_threadsafe(self._shutdown_timeout)
        super().handle_exit(sig, frame)


def run_server(
    session: Session,
    host: str,
    port: int,
    max_queue: int,
    model_name: str,
    shutdown_timeout: float,
    quiet: bool,
) -> None:
    """Serve ``session`` until SIGTERM or Ctrl-C: then stop accepting connections, give running
    sequences ``shutdown_timeout`` seconds to finish, cancel the rest, and return."""
    sock = _listen(host, port)
    app = build_app(lambda: session, max_queue, model_name)
    config = uvicorn.Config(
        app,
        # A backstop only: the drain ends every response by shutdown_timeout.
        timeout_graceful_shutdown=shutdown_timeout + SHUTDOWN_GRACE_S,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
    )
    bound_host, bound_port = sock.getsockname()[:2]
    if not quiet:
        print(f"jrtc serve: {model_name} on http://{bound_host}:{bound_port}", file=sys.stderr, flush=True)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT and then raises the signal again under the handler
    # that was there before it; a no-op there makes the planned way to stop the server exit 0.
    previous = {sig: signal.signal(sig, _ignore_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _Server(config, app, shutdown_timeout).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
