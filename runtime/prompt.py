"""JRT-Prompt: repeat the context before the model answers, and fill short prompts up to the encoder length.

Templates follow the paper's evaluation code (``lm-eval-harness/lm_eval/tasks/based_*/task.py`` in
https://github.com/HazyResearch/prefix-linear-attention): the default prompt is ``{ctx}. {question}`` and the
JRT-Prompt one ``{lead} {ctx}.\\n{ctx}. {question}``, where the lead is the question itself, the dataset's
original question, or "Information about {Key}." for the information-extraction tasks; generalised here to
N copies of the context separated by newlines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jrtc.errors import JrtcError, check_int
from jrtc.runtime.sampling import check_text

PAD_MODES = ("left", "read2x")


@dataclass(frozen=True)
class Prompt:
    """Prompt text, and for ``read2x`` padding the text repeated into the pad region (None: masked spaces)."""

    text: str
    fill: str | None = None


def _sentence(context: str) -> str:
    # The templates end each copy with exactly one "." (the harness strips the context's own).
    return context.strip().strip(".").strip() + "."


def build_prompt(
    context: str,
    question: str | None = None,
    repeat: int | None = None,
    pad: str = "left",
    lead: str | None = None,
) -> Prompt:
    """The model input for ``context`` (and a ``question`` about it).

    Without a question the context is the prompt, verbatim. With one, ``repeat`` copies of the context
    (default 2, the paper's JRT-Prompt; 1 gives the default template) sit between the question and its
    repeat; ``lead`` replaces the question before the first copy. ``pad="read2x"`` fills the space before a prompt shorter than the encoder with copies of the
    context instead of masked spaces (paper Table 4, "Read-2x").
    """
    if pad not in PAD_MODES:
        raise JrtcError(f"unknown pad mode {pad!r} (choose from {', '.join(PAD_MODES)})")
    check_text("the prompt" if question is None else "the context", context)
    if question is None:
        if repeat not in (None, 1):
            raise JrtcError("--repeat needs a question: without one the prompt file is used as is")
        text = context
        fill = context.strip() + "\n"
    else:
        check_text("the question", question)
        copies = 2 if repeat is None else check_int("repeat", repeat, minimum=1)
        question = question.strip()
        sentence = _sentence(context)
        if copies == 1:
            text = f"{sentence} {question}"
        else:
            first = question if lead is None else lead.strip()
            text = f"{first} " + "\n".join([sentence] * copies) + f" {question}"
        fill = sentence + "\n"
    return Prompt(text=text, fill=fill if pad == "read2x" else None)


def pad_prompt(
    ids: Sequence[int], enc_length: int, pad_id: int, fill: Sequence[int] | None = None
) -> tuple[list[int], int]:
    """Bring a prompt up to ``enc_length`` tokens for the first (encoder) call -> ``(ids, num_pad)``.

    The checkpoints were evaluated with short prompts left-padded by the space token, the pads' PLA keys
    masked (reference jrt-model.md §2.5): ``num_pad`` counts them. With ``fill`` (read2x) the region holds
    the tail of ``fill`` repeated instead; those are real tokens, so nothing is masked.
    """
    missing = enc_length - len(ids)
    if missing <= 0:
        return list(ids), 0
    if fill:
        copies = -(-missing // len(fill))
        return (list(fill) * copies)[-missing:] + list(ids), 0
    return [pad_id] * missing + list(ids), missing
