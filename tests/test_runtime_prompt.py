"""JRT-Prompt building and padding to the encoder length."""

from __future__ import annotations

import pytest

from jrtc.errors import JrtcError
from jrtc.runtime.prompt import Prompt, build_prompt, pad_prompt


def test_jrt_prompt_matches_the_paper_template() -> None:
    # based_nq / based_triviaqa twice: "{orig_question} {ctx}.\n{ctx}. {question}" (reference §4.2)
    prompt = build_prompt("The Eiffel Tower is in Paris", "Where is the Eiffel Tower?")
    ctx = "The Eiffel Tower is in Paris"
    assert prompt == Prompt(f"Where is the Eiffel Tower? {ctx}.\n{ctx}. Where is the Eiffel Tower?")


def test_repeat_one_is_the_default_template() -> None:
    assert build_prompt("ctx", "Q:", repeat=1).text == "ctx. Q:"


def test_repeat_n_copies() -> None:
    assert build_prompt("ctx", "Q?", repeat=3).text == "Q? ctx.\nctx.\nctx. Q?"


def test_context_whitespace_and_final_period() -> None:
    assert build_prompt("  Some text.\n\n", "Q?").text == "Q? Some text.\nSome text. Q?"


def test_without_question_the_file_is_the_prompt() -> None:
    assert build_prompt("Once upon a time\n").text == "Once upon a time\n"
    with pytest.raises(JrtcError, match="needs a question"):
        build_prompt("text", repeat=2)


def test_read2x_fill_is_the_context() -> None:
    assert build_prompt("ctx", "Q?", pad="read2x").fill == "ctx.\n"
    assert build_prompt("Once upon a time\n", pad="read2x").fill == "Once upon a time\n"
    assert build_prompt("ctx", "Q?").fill is None
    with pytest.raises(JrtcError, match="pad mode"):
        build_prompt("ctx", pad="right")


def test_left_pad_masks_spaces() -> None:
    assert pad_prompt([7, 8, 9], enc_length=6, pad_id=32) == ([32, 32, 32, 7, 8, 9], 3)


def test_long_prompts_are_not_padded() -> None:
    ids = list(range(10))
    assert pad_prompt(ids, enc_length=6, pad_id=32) == (ids, 0)
    assert pad_prompt(ids, enc_length=10, pad_id=32) == (ids, 0)
    assert pad_prompt(ids, enc_length=0, pad_id=32) == (ids, 0)  # Based: no encoder


def test_read2x_fills_with_the_tail_of_repeated_context_unmasked() -> None:
    ids, num_pad = pad_prompt([9, 9], enc_length=9, pad_id=32, fill=[1, 2, 3])
    assert (ids, num_pad) == ([3, 1, 2, 3, 1, 2, 3, 9, 9], 0)
    ids, num_pad = pad_prompt([9], enc_length=3, pad_id=32, fill=[1, 2, 3, 4])
    assert (ids, num_pad) == ([3, 4, 9], 0)
