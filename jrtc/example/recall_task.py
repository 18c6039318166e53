"""Synthetic associative recall in plain text: a context of ``key:value`` pairs, then a query for one key.

Read once:   ``{context} {key}:``  -> ``{value}\\n``
Read twice:  ``{key}: {context}\\n{context} {key}:`` (JRT-Prompt, the IE-task template of the paper)
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class RecallExample:
    context: str
    question: str
    answer: str

    def prompt(self, read_twice: bool) -> str:
        if read_twice:
            return f"{self.question} {self.context}\n{self.context} {self.question}"
        return f"{self.context} {self.question}"


def make_example(
    rng: random.Random, min_pairs: int, max_pairs: int, key_letters: int, value_digits: int
) -> RecallExample:
    n = rng.randint(min_pairs, max_pairs)
    keys: list[str] = []
    while len(keys) < n:
        key = "".join(rng.choices(string.ascii_lowercase, k=key_letters))
        if key not in keys:
            keys.append(key)
    values = ["".join(rng.choices(string.digits, k=value_digits)) for _ in keys]
    context = ", ".join(f"{k}:{v}" for k, v in zip(keys, values, strict=True)) + "."
    i = rng.randrange(n)
    return RecallExample(context=context, question=f"{keys[i]}:", answer=values[i])
