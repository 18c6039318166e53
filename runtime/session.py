"""Sessions: a state pool allocated once, prefill per the reference protocol, batched streaming decode.

A session holds ``max_batch`` slots. A request takes a free slot, is prefilled alone (its first call holds
at least the encoder's ``enc_length`` tokens, left-padded if the prompt is shorter), and then decodes in
one batch with every other active slot, each at its own position (continuous batching). A finished
sequence frees its slot for the next waiting request. Nothing grows with the length of a generation.
"""

from __future__ import annotations

import functools
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from jrtc.errors import JrtcError, check_int
from jrtc.runtime.prompt import Prompt, pad_prompt
from jrtc.runtime.sampling import SamplingParams, check_text, sample
from jrtc.runtime.text import TextStream

if TYPE_CHECKING:
    from jrtc.runtime.engine import Engine


@dataclass
class Stats:
    """What one request cost; filled in while it generates."""

    prompt_tokens: int = 0  # the prompt's own tokens
    prefill_tokens: int = 0  # with the padding up to enc_length
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    decode_s: float = 0.0  # wall time of the batched decode steps this request took part in
    state_bytes: int = 0  # its slot of the state pool
    finish_reason: str | None = None  # "eos", "stop" or "length"

    @property
    def decode_tokens_per_s(self) -> float:
        # The first token comes out of the prefill; every later one out of a decode step.
        return (self.generated_tokens - 1) / self.decode_s if self.decode_s else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decode_tokens_per_s": self.decode_tokens_per_s}


@dataclass(eq=False)
class Request:
    """One sequence to generate: prompt token ids, sampling, and the read2x filler ids if any."""

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    fill: list[int] | None = None
    stats: Stats = field(default_factory=Stats)


@dataclass(frozen=True)
class Token:
    """A generated token and the text it made final; ``finish_reason`` is set on a request's last one."""

    request: Request = field(repr=False)
    id: int
    text: str
    finish_reason: str | None = None


@dataclass(eq=False)
class _Sequence:
    request: Request
    rng: np.random.Generator
    text: TextStream
    last: int = 0


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _one_thread_at_a_time(method: _Method) -> _Method:
    """Raise instead of running when another thread is inside one of the session's guarded methods."""

    @functools.wraps(method)
    def guarded(self: Session, *args: Any, **kwargs: Any) -> Any:
        if not self._in_use.acquire(blocking=False):
            raise RuntimeError(
                "this Session is in use by another thread; a Session is driven from one thread at a time "
                "(hand it requests through a queue, as a server's loop does)"
            )
        try:
            return method(self, *args, **kwargs)
        finally:
            self._in_use.release()

    return guarded  # type: ignore[return-value]


class Session:
    """Generates for many requests at once over the engine's backend; see the module docstring.

    Not thread-safe: one thread drives :meth:`step` (a service hands it requests through a queue). A
    second thread calling in while one is inside raises a ``RuntimeError`` rather than mixing sequences.
    """

    def __init__(self, engine: Engine, max_batch: int | None = None) -> None:
        manifest = engine.manifest
        self.engine = engine
        self.max_batch = manifest.max_batch if max_batch is None else max_batch
        # Engines are built for batches up to the manifest's max_batch (TensorRT profiles are).
        check_int("max_batch", self.max_batch, minimum=1)
        if not 1 <= self.max_batch <= manifest.max_batch:
            raise JrtcError(
                f"max_batch must be between 1 and the engine's {manifest.max_batch}, got {max_batch}"
            )
        # The whole state pool, allocated here once and updated in place (slot = row).
        try:
            self.states = [np.zeros((self.max_batch, *s.shape), s.dtype) for s in manifest.state]
        except (MemoryError, ValueError):  # numpy's two ways of saying the pool is too large
            per_slot = sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in manifest.state)
            raise JrtcError(
                f"a state pool of {self.max_batch} sequences needs {self.max_batch * per_slot / 2**30:.3g} GiB, "
                "more than this machine can allocate: pass a smaller max_batch"
            ) from None
        self.positions = np.zeros(self.max_batch, np.int64)
        self.state_bytes = sum(s.nbytes for s in self.states) // self.max_batch
        self._slots: list[_Sequence | None] = [None] * self.max_batch
        self._pending: deque[Request] = deque()
        self._in_use = threading.Lock()

    def request(self, prompt: str | Prompt | Sequence[int], params: SamplingParams | None = None) -> Request:
        """A request from text, a built :class:`Prompt`, or token ids."""
        if params is not None and not isinstance(params, SamplingParams):
            raise JrtcError(f"params must be a SamplingParams, got {type(params).__name__}")
        fill = None
        if isinstance(prompt, Prompt):
            if prompt.fill is not None:
                fill = self.engine.tokenizer.encode(prompt.fill, add_special_tokens=False).ids
            prompt = prompt.text
        ids = (
            self.engine.encode(check_text("the prompt", prompt)) if isinstance(prompt, str) else list(prompt)
        )
        return Request(ids, params or SamplingParams(), fill)

    @_one_thread_at_a_time
    def submit(self, request: Request) -> None:
        """Queue a request; it starts at the next :meth:`step` with a free slot."""
        vocab = self.engine.manifest.vocab_size
        if not request.prompt:
            raise JrtcError("the prompt is empty")
        if any(
            isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < vocab
            for t in [*request.prompt, *(request.fill or ())]
        ):
            raise JrtcError(f"the prompt has token ids outside the model's vocabulary (0..{vocab - 1})")
        request.stats = Stats()  # a request submitted again starts over
        self._pending.append(request)

    @_one_thread_at_a_time
    def cancel(self, request: Request) -> None:
        """Drop a request, waiting or running (a service's client went away)."""
        if request in self._pending:
            self._pending.remove(request)
        for slot, seq in enumerate(self._slots):
            if seq is not None and seq.request is request:
                self._slots[slot] = None

    @property
    def busy(self) -> bool:
        return bool(self._pending) or any(seq is not None for seq in self._slots)

    @_one_thread_at_a_time
    def step(self) -> list[Token]:
        """Start waiting requests in free slots, then decode one token for every active slot."""
        tokens = []
        while self._pending and None in self._slots:
            tokens.append(self._prefill(self._slots.index(None), self._pending.popleft()))
        active = [slot for slot, seq in enumerate(self._slots) if seq is not None]
        if active:
            tokens += self._decode(active)
        return tokens

    def stream(self, requests: Iterable[Request]) -> Iterator[Token]:
        """Submit ``requests`` and yield tokens, of any request, as they are produced.

        Closing the generator early cancels the requests it submitted that have not finished.
        """
        submitted = list(requests)
        try:
            for request in submitted:
                self.submit(request)
            while self.busy:
                yield from self.step()
        finally:
            for request in submitted:
                if request.stats.finish_reason is None:
                    self.cancel(request)

    def generate(
        self, prompt: str | Prompt | Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[Token]:
        """Stream the tokens of one prompt; the request (with its stats) is ``token.request``."""
        return self.stream([self.request(prompt, params)])

    def _run(self, rows: slice | np.ndarray, input_ids: np.ndarray, num_pad: np.ndarray) -> np.ndarray:
        """One step-graph call for the slots ``rows``; their states and positions advance in place."""
        logits, next_states = self.engine.backend.run(
            input_ids, self.positions[rows], num_pad, [state[rows] for state in self.states]
        )
        for state, new in zip(self.states, next_states, strict=True):
            state[rows] = new
        self.positions[rows] += input_ids.shape[1]
        return logits

    def _prefill(self, slot: int, request: Request) -> Token:
        manifest = self.engine.manifest
        start = time.perf_counter()
        ids, num_pad = pad_prompt(request.prompt, manifest.enc_length, manifest.pad_token_id, request.fill)
        for state in self.states:
            state[slot] = 0
        self.positions[slot] = 0
        rows = slice(slot, slot + 1)
        # Chunks of max_prompt_len (>= enc_length): the first one holds the whole encoder region.
        for begin in range(0, len(ids), manifest.max_prompt_len):
            chunk = np.asarray(ids[begin : begin + manifest.max_prompt_len], np.int64)[None]
            logits = self._run(rows, chunk, np.array([num_pad if begin == 0 else 0], np.int64))
        params = request.params
        text = TextStream(self.engine.tokenizer, request.prompt, params.stop)
        self._slots[slot] = _Sequence(request, np.random.default_rng(params.seed), text)
        stats = request.stats
        stats.prompt_tokens, stats.prefill_tokens = len(request.prompt), len(ids)
        stats.state_bytes = self.state_bytes
        stats.prefill_ms = (time.perf_counter() - start) * 1e3
        return self._emit(slot, logits[0])

    def _decode(self, active: list[int]) -> list[Token]:
        start = time.perf_counter()
        sequences = [self._slots[slot] for slot in active]
        # Contiguous slots are a view of the pool, not a gathered copy (slots fill lowest first).
        rows = (
            slice(active[0], active[-1] + 1)
            if active[-1] - active[0] + 1 == len(active)
            else np.array(active)
        )
        input_ids = np.array([[seq.last] for seq in sequences], np.int64)
        logits = self._run(rows, input_ids, np.zeros(len(active), np.int64))
        tokens = [self._emit(slot, row) for slot, row in zip(active, logits, strict=True)]
        elapsed = time.perf_counter() - start
        for seq in sequences:
            seq.request.stats.decode_s += elapsed
        return tokens

    def _emit(self, slot: int, logits: np.ndarray) -> Token:
        """Sample the slot's next token from its logits row; finish the request if it stops here."""
        seq = self._slots[slot]
        assert seq is not None
        manifest, params, stats = self.engine.manifest, seq.request.params, seq.request.stats
        token_id = sample(logits[: manifest.vocab_size], params, seq.rng)
        stats.generated_tokens += 1
        seq.last = token_id
        finish = None
        if params.stop_on_eos and token_id == manifest.eos_token_id:
            text, finish = seq.text.flush(), "eos"
        else:
            text = seq.text.push(token_id)
            if seq.text.stopped:
                finish = "stop"
            elif stats.generated_tokens >= params.max_new_tokens:
                text, finish = text + seq.text.flush(), "length"
        if finish is not None:
            stats.finish_reason = finish
            self._slots[slot] = None
        return Token(seq.request, token_id, text, finish)
