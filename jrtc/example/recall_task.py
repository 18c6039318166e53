"""The built-in examples' task: multi-query associative recall written as text.

A context holds ``key:value`` pairs (``D:g, Q:a, K:t``): distinct one-letter keys, each with a distinct
one-letter value. An evaluation row asks for one key, as an information-extraction row (``text``, ``key``,
``value``, the fields of the paper's FDA and SWDE sets), so ``jrtc eval`` reads it with the paper's templates:
``D:g, Q:a, K:t. Q:`` read once, ``Information about Q. D:g, Q:a, K:t.\\nD:g, Q:a, K:t. Q:`` read twice,
and the answer is ``a``. Training rows ask for every key of their context, one after the other.

Nothing here imports torch: ``jrtc eval --task recall`` draws its rows with it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jrtc.example import SETTINGS


@dataclass(frozen=True)
class RecallTask:
    """How contexts are drawn (the ``task`` section of ``settings.json``)."""

    min_pairs: int
    max_pairs: int
    keys: str  # the alphabet of one-letter keys
    values: str  # the alphabet of one-letter values

    def draw_pairs(self, rng: random.Random) -> list[tuple[str, str]]:
        """A context's pairs: distinct keys and distinct values, both uniform."""
        n = rng.randint(self.min_pairs, self.max_pairs)
        return list(zip(rng.sample(self.keys, n), rng.sample(self.values, n), strict=True))

    @property
    def answer_budget(self) -> int:
        """New tokens an answer may take with a byte-level tokenizer: one, the value's letter (a longer
        budget would let the lenient ``contains`` metric count a second guess)."""
        return 1


def context_text(pairs: list[tuple[str, str]]) -> str:
    return ", ".join(f"{key}:{value}" for key, value in pairs)


def row(pairs: list[tuple[str, str]], key: str) -> dict[str, str]:
    """The evaluation row asking ``key`` of the context ``pairs``."""
    return {"text": context_text(pairs), "key": key, "value": dict(pairs)[key]}


def load_settings(path: Path = SETTINGS) -> dict[str, Any]:
    return json.loads(path.read_text())


def load_task() -> RecallTask:
    return RecallTask(**load_settings()["task"])


def eval_rows(task: RecallTask, examples: int, seed: int) -> list[dict[str, str]]:
    """``examples`` fresh rows, one per context, each asking a key drawn at random."""
    rng = random.Random(seed)
    rows = []
    for _ in range(examples):
        pairs = task.draw_pairs(rng)
        rows.append(row(pairs, rng.choice(pairs)[0]))
    return rows
