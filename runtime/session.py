"""Sessions: a state pool allocated once on the backend's device, batched prefill, streaming decode.

A session holds ``max_batch`` slots of the backend's state pool. Waiting requests take free slots and are
prefilled together, each row exactly as it would be alone (its first call holds at least the encoder's
``enc_length`` tokens, left-padded if the prompt is shorter); then every running sequence decodes in one
batch, each at its own position (continuous batching). A finished sequence frees its slot for the next
waiting request. The session keeps positions, tokens and sampling state only: the state stays on the
device, and per decode step only the sampled token ids reach the host. Nothing grows with the length of a
generation.
"""

from __future__ import annotations

import functools
import numbers
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from jrtc.errors import JrtcError, check_int
from jrtc.runtime.prompt import Prompt, pad_prompt
from jrtc.runtime.sampling import Draw, SamplingParams, check_text
from jrtc.runtime.text import TextStream

if TYPE_CHECKING:
    from jrtc.runtime.backends import Logits
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
    seed: int
    text: TextStream
    last: int = 0


@dataclass(eq=False)
class _Prefill:
    """A request being prefilled: its padded ids and the number of leading pads masked in PLA."""

    sequence: _Sequence
    ids: list[int]
    num_pad: int


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
        # The state pool lives on the backend's device; the session keeps only positions and tokens.
        self.pool = engine.backend.new_pool(self.max_batch)
        self.positions = np.zeros(self.max_batch, np.int64)
        # Running sequences, by slot. They always fill the lowest slots (see _finish), so every call covers
        # one contiguous range of the pool.
        self._running: list[_Sequence] = []
        self._pending: deque[Request] = deque()
        self._in_use = threading.Lock()

    @property
    def state_bytes(self) -> int:
        """Bytes of one slot of the state pool: what a sequence costs, however long it runs."""
        return self.pool.bytes_per_sequence

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
        for slot, seq in enumerate(self._running):
            if seq.request is request:
                self._finish([slot])
                return

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._running)

    @_one_thread_at_a_time
    def step(self) -> list[Token]:
        """Start the waiting requests that fit, prefilled together, then decode one token for every
        running sequence."""
        tokens = []
        free = self.max_batch - len(self._running)
        if self._pending and free:
            tokens += self._prefill([self._pending.popleft() for _ in range(min(free, len(self._pending)))])
        if self._running:
            tokens += self._decode()
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

    def _run(self, slots: slice, input_ids: np.ndarray, num_pad: np.ndarray) -> Logits:
        """One step-graph call for ``slots``; their states and positions advance in place."""
        logits = self.pool.run(slots, input_ids, self.positions[slots], num_pad)
        self.positions[slots] += input_ids.shape[1]
        return logits

    def _prefill(self, requests: list[Request]) -> list[Token]:
        """Prefill ``requests`` together, each row exactly as it would be alone.

        Every prompt is first brought up to the encoder's length (left-padded, the reference protocol), so
        the first call, of the shortest prompt's length capped at ``max_prompt_len``, holds every row's
        whole encoder. Rows are placed longest first: when the shortest rows run out, the ones still going
        are again the lowest slots of the batch, and the next call continues them alone.
        """
        manifest = self.engine.manifest
        start = time.perf_counter()
        rows = []
        for request in requests:
            ids, num_pad = pad_prompt(
                request.prompt, manifest.enc_length, manifest.pad_token_id, request.fill
            )
            params = request.params
            seed = params.seed if params.seed is not None else secrets.randbits(64)
            text = TextStream(self.engine.tokenizer, request.prompt, params.stop)
            rows.append(_Prefill(_Sequence(request, seed, text), ids, num_pad))
        rows.sort(key=lambda row: len(row.ids), reverse=True)  # stable: equal lengths keep their order
        first = len(self._running)
        self._running += [row.sequence for row in rows]
        self.pool.reset(slice(first, first + len(rows)))
        self.positions[first : first + len(rows)] = 0

        first_tokens: dict[int, int] = {}
        done, going = 0, len(rows)
        while going:
            length = min(len(rows[going - 1].ids) - done, manifest.max_prompt_len)
            chunk = np.array([row.ids[done : done + length] for row in rows[:going]], np.int64)
            num_pad = np.array([row.num_pad if done == 0 else 0 for row in rows[:going]], np.int64)
            logits = self._run(slice(first, first + going), chunk, num_pad)
            done += length
            ending = sum(1 for row in rows[:going] if len(row.ids) == done)
            ids = self.pool.sample(
                logits[going - ending : going],
                [self._draw(row.sequence) for row in rows[going - ending : going]],
            )
            for row, token_id in zip(rows[going - ending : going], ids, strict=True):
                first_tokens[id(row.sequence)] = token_id
            going -= ending

        elapsed_ms = (time.perf_counter() - start) * 1e3
        for row in rows:
            stats = row.sequence.request.stats
            stats.prompt_tokens, stats.prefill_tokens = len(row.sequence.request.prompt), len(row.ids)
            stats.state_bytes = self.state_bytes
            stats.prefill_ms = elapsed_ms
        by_request = {id(row.sequence.request): row.sequence for row in rows}
        sequences = [by_request[id(request)] for request in requests]  # tokens come in submission order
        return self._emit(sequences, [first_tokens[id(seq)] for seq in sequences])

    def _decode(self) -> list[Token]:
        start = time.perf_counter()
        sequences = list(self._running)
        input_ids = np.array([[seq.last] for seq in sequences], np.int64)
        logits = self._run(slice(0, len(sequences)), input_ids, np.zeros(len(sequences), np.int64))
        token_ids = self.pool.sample(logits, [self._draw(seq) for seq in sequences])
        elapsed = time.perf_counter() - start
        for seq in sequences:
            seq.request.stats.decode_s += elapsed
        return self._emit(sequences, token_ids)

    @staticmethod
    def _draw(seq: _Sequence) -> Draw:
        return Draw(seq.request.params, seq.seed, seq.request.stats.generated_tokens)

    def _emit(self, sequences: list[_Sequence], token_ids: list[int]) -> list[Token]:
        """Hand out each sequence's next token; finish the sequences that stop here."""
        eos = self.engine.manifest.eos_token_id
        tokens, finished = [], []
        for seq, token_id in zip(sequences, token_ids, strict=True):
            params, stats = seq.request.params, seq.request.stats
            stats.generated_tokens += 1
            seq.last = token_id
            finish = None
            if params.stop_on_eos and token_id == eos:
                text, finish = seq.text.flush(), "eos"
            else:
                text = seq.text.push(token_id)
                if seq.text.stopped:
                    finish = "stop"
                elif stats.generated_tokens >= params.max_new_tokens:
                    text, finish = text + seq.text.flush(), "length"
            if finish is not None:
                stats.finish_reason = finish
                finished.append(seq)
            tokens.append(Token(seq.request, token_id, text, finish))
        self._finish([slot for slot, seq in enumerate(self._running) if seq in finished])
        return tokens

    def _finish(self, slots: list[int]) -> None:
        """Free ``slots``, moving the highest running sequences down into them so that the running ones
        stay in the lowest slots (one slot's state copied per finished sequence, on the backend's device)."""
        for slot in sorted(slots, reverse=True):
            last = len(self._running) - 1
            if slot != last:
                self.pool.move(last, slot)
                self.positions[slot] = self.positions[last]
            self._running[slot] = self._running[last]
            self._running.pop()
