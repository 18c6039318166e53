"""Recall accuracy by the paper's evaluation protocol, on any engine (``jrtc eval``).

Rows are read as the paper's harness reads them (``lm-eval-harness/lm_eval/tasks/based_*/task.py`` in
https://github.com/HazyResearch/prefix-linear-attention), in one of two shapes:

- information extraction (FDA, SWDE): ``{"text", "key", "value"}``. Read once: ``{text}. {Key}:``; read
  twice: ``Information about {Key}. {text}.\\n{text}. {Key}:``, with ``{Key}`` the key, first letter upper-cased.
- question answering (NQ, TriviaQA, DROP): ``{"context", "question", "orig_question", "answers"}``. Read
  once: ``{context}. {question}``; read twice: ``{orig_question} {context}.\\n{context}. {question}``.

Decoding is greedy with a short answer budget (the harness's 48 new tokens); the answer is cut at its first
newline and is right when it contains a gold answer, case-insensitively (the harness's ``contains`` metric).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jrtc.errors import JrtcError
from jrtc.runtime.prompt import Prompt, build_prompt
from jrtc.runtime.sampling import SamplingParams

if TYPE_CHECKING:
    from jrtc.runtime.engine import Engine

ANSWER_BUDGET = 48  # max_gen_toks of every based_* task
IE_FIELDS = ("text", "key", "value")
QA_FIELDS = ("context", "question", "answers")


@dataclass(frozen=True)
class Item:
    """One question about one context, with its gold answers."""

    context: str
    question: str  # what the prompt ends with (the cloze form)
    lead: str  # what the read-twice prompt starts with
    answers: tuple[str, ...]

    def prompt(self, repeat: int) -> Prompt:
        """The prompt with ``repeat`` copies of the context (1: the default template; 2: JRT-Prompt)."""
        return build_prompt(self.context, self.question, repeat, lead=self.lead)


def _drop_suffix(text: str, suffix: str) -> str:
    # The harness drops a question that the context already ends with, as often as it appears.
    while suffix and text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)]
    return text


def item_from_row(row: Any, where: str = "row") -> Item:
    """An :class:`Item` from an information-extraction or a question-answer row; ``where`` names it in errors."""
    if not isinstance(row, dict):
        raise JrtcError(f"{where} is not a JSON object")
    if all(isinstance(row.get(f), str) for f in IE_FIELDS):
        key = row["key"].strip()
        if not key:
            raise JrtcError(f"{where} has an empty key")
        upper_key = key[0].upper() + key[1:]
        text = _drop_suffix(row["text"], key + ":").strip("\n")
        return Item(text, f"{upper_key}:", f"Information about {upper_key}.", (row["value"],))
    if isinstance(row.get("context"), str) and isinstance(row.get("question"), str):
        answers = row.get("answers")
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
            raise JrtcError(f"{where} needs 'answers': a non-empty list of strings")
        question = row["question"].strip()
        context = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", row["context"]).strip()  # TriviaQA's markers
        lead = row.get("orig_question")
        if not isinstance(lead, str):
            raise JrtcError(f"{where} needs 'orig_question', the question that opens the read-twice prompt")
        return Item(_drop_suffix(context, question), question, lead.strip().strip(":"), tuple(answers))
    raise JrtcError(
        f"{where} has neither the fields {', '.join(IE_FIELDS)} (information extraction) nor "
        f"{', '.join(QA_FIELDS)}, orig_question (question answering)"
    )


def read_jsonl(path: Path) -> list[Item]:
    """The items of a JSONL file, one row per line (blank lines skipped)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise JrtcError(f"task file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JrtcError(f"cannot read task file {path}: {exc}") from None
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JrtcError(f"{path}:{number} is not valid JSON ({exc.msg})") from None
        items.append(item_from_row(row, f"{path}:{number}"))
    if not items:
        raise JrtcError(f"task file {path} has no rows")
    return items


def answer_text(generated: str) -> str:
    """What the metric sees: the generation up to its first newline."""
    return generated.split("\n", 1)[0]


def contains(answer: str, gold: Sequence[str]) -> bool:
    """The harness's ``contains`` metric: some gold answer occurs in the answer, ignoring case."""
    return any(re.search(re.escape(g), answer, re.IGNORECASE) for g in gold)


@dataclass(frozen=True)
class Reading:
    """The results of one way of reading (``repeat`` copies of the context) over all items."""

    repeat: int
    answers: tuple[str, ...]
    right: tuple[bool, ...]
    prompt_tokens: int
    generated_tokens: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return sum(self.right) / len(self.right)

    @property
    def tokens_per_s(self) -> float:
        """Prompt and generated tokens per second of wall time, the whole batch together."""
        return (self.prompt_tokens + self.generated_tokens) / self.seconds if self.seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "repeat": self.repeat,
            "accuracy": self.accuracy,
            "right": sum(self.right),
            "examples": len(self.right),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "seconds": round(self.seconds, 3),
            "tokens_per_s": round(self.tokens_per_s, 1),
        }


def evaluate(
    engine: Engine,
    items: Sequence[Item],
    repeat: int,
    max_new_tokens: int = ANSWER_BUDGET,
    on_answer: Callable[[], None] | None = None,
) -> Reading:
    """Answer every item greedily, the requests batched through one session; ``on_answer`` after each."""
    session = engine.session()
    # Stopping at the newline ends a request where the harness would cut its 48 tokens anyway.
    params = SamplingParams(max_new_tokens=max_new_tokens, stop=("\n",))
    requests = [session.request(item.prompt(repeat), params) for item in items]
    texts: dict[int, list[str]] = {id(r): [] for r in requests}
    start = time.perf_counter()
    for token in session.stream(requests):
        texts[id(token.request)].append(token.text)
        if token.finish_reason is not None and on_answer is not None:
            on_answer()
    seconds = time.perf_counter() - start
    answers = tuple(answer_text("".join(texts[id(r)])) for r in requests)
    return Reading(
        repeat=repeat,
        answers=answers,
        right=tuple(contains(a, item.answers) for a, item in zip(answers, items, strict=True)),
        prompt_tokens=sum(r.stats.prompt_tokens for r in requests),
        generated_tokens=sum(r.stats.generated_tokens for r in requests),
        seconds=seconds,
    )
