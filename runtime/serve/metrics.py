"""Prometheus metrics of one server, in a registry of its own (one per engine loop, so that servers built
in one process, as the tests do, count apart)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds, from a decode step of the example engine (about a millisecond) to a long queue wait.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The tokens/s gauge is the rate over windows of at least this long, so that it does not flicker per step.
RATE_WINDOW_S = 1.0


class Metrics:
    def __init__(self, state_pool_bytes: int, slots: int) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "jrtc_requests",
            "Requests by how they ended: eos, stop or length (finished), cancelled (the client left), "
            "rejected (429, queue full), invalid (400), failed (500)",
            ["status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "jrtc_prompt_tokens", "Prompt tokens of admitted requests", registry=registry
        )
        self.generated_tokens = Counter("jrtc_generated_tokens", "Tokens generated", registry=registry)
        self.tokens_per_second = Gauge(
            "jrtc_generated_tokens_per_second",
            f"Tokens generated per second over the last {RATE_WINDOW_S:g} s of work (0 when idle)",
            registry=registry,
        )
        self.active_sequences = Gauge(
            "jrtc_active_sequences", "Sequences holding a slot of the state pool", registry=registry
        )
        self.queue_depth = Gauge(
            "jrtc_queue_depth", "Admitted requests waiting for a slot", registry=registry
        )
        Gauge("jrtc_state_pool_bytes", "Bytes of the recurrent-state pool", registry=registry).set(
            state_pool_bytes
        )
        Gauge("jrtc_state_pool_slots", "Sequences the state pool holds", registry=registry).set(slots)

        def latency(name: str, documentation: str) -> Histogram:
            return Histogram(name, documentation, buckets=LATENCY_BUCKETS, registry=registry)

        self.time_to_first_token = latency(
            "jrtc_time_to_first_token_seconds", "From admission to the first token (queue wait and prefill)"
        )
        self.prefill = latency("jrtc_prefill_seconds", "Prefill of one prompt")
        self.decode_step = latency(
            "jrtc_decode_step_seconds", "Engine steps that only decoded: one token for every active sequence"
        )
        self.request_seconds = latency(
            "jrtc_request_seconds", "From admission to the last token, of finished requests"
        )
        self._window_start: float | None = None
        self._window_tokens = 0

    def record_step(self, started: float, ended: float, tokens: int, decode_only: bool) -> None:
        """One engine step from ``started`` to ``ended`` (perf_counter seconds) that produced ``tokens``."""
        self.generated_tokens.inc(tokens)
        if decode_only:
            self.decode_step.observe(ended - started)
        if self._window_start is None:
            self._window_start = started
        self._window_tokens += tokens
        if ended - self._window_start >= RATE_WINDOW_S:
            self.tokens_per_second.set(self._window_tokens / (ended - self._window_start))
            self._window_start, self._window_tokens = ended, 0

    def record_idle(self) -> None:
        self.tokens_per_second.set(0)
        self._window_start, self._window_tokens = None, 0

    def exposition(self) -> bytes:
        """The text format that Prometheus scrapes."""
        return generate_latest(self.registry)
