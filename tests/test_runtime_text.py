"""Tokenizers and streaming detokenization (no engine needed)."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from jrtc.errors import JrtcError
from jrtc.runtime.text import TextStream
from jrtc.tokenizer import byte_level_tokenizer, byte_level_tokenizer_json, load_tokenizer, pad_token_id

SAMPLES = [
    "plain ascii",
    "  leading and trailing spaces  ",
    "tabs\tnew\nlines\r\n",
    "héllo wörld — ünïcödé",
    "日本語のテキスト",
    "emoji 🤖🧪 and a ZWJ 👩‍💻",
    "\x00\x01\x7f control bytes",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_byte_tokenizer_ids_are_the_utf8_bytes(text: str) -> None:
    tokenizer = byte_level_tokenizer()
    ids = tokenizer.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_byte_tokenizer_covers_every_byte_once() -> None:
    tokenizer = byte_level_tokenizer()
    assert tokenizer.get_vocab_size() == 256
    assert sorted(tokenizer.get_vocab().values()) == list(range(256))
    assert pad_token_id(tokenizer) == 32


def test_byte_tokenizer_round_trips_through_a_file(tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(byte_level_tokenizer_json(), encoding="utf-8")
    tokenizer = load_tokenizer(path)
    assert tokenizer.encode("ok ✓").ids == list("ok ✓".encode())


def _gpt2_like_tokenizer() -> Tokenizer:
    """GPT-2's byte alphabet in GPT-2's id order (printable bytes first), so a space is id 220 there too."""
    spec = json.loads(byte_level_tokenizer_json())
    chars = sorted(spec["model"]["vocab"], key=ord)
    spec["model"]["vocab"] = {c: i for i, c in enumerate(chars)}
    return Tokenizer.from_str(json.dumps(spec))


def test_pad_id_is_the_space_token() -> None:
    assert pad_token_id(_gpt2_like_tokenizer()) == 220


def test_load_tokenizer_errors(tmp_path) -> None:
    with pytest.raises(JrtcError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(JrtcError, match="cannot read tokenizer") as info:
        load_tokenizer(bad)
    assert "\n" not in str(info.value)


def _stream(
    ids: list[int], stop: tuple[str, ...] = (), context: list[int] | None = None
) -> tuple[list[str], bool]:
    stream = TextStream(byte_level_tokenizer(), context or [], stop)
    pieces = []
    for i in ids:
        pieces.append(stream.push(i))
        if stream.stopped:
            return pieces, True
    pieces.append(stream.flush())
    return pieces, False


def test_stream_holds_partial_characters_back() -> None:
    pieces, _ = _stream(list("a€b".encode()))  # € is 3 bytes
    assert pieces == ["a", "", "", "€", "b", ""]


def test_stream_releases_invalid_bytes_eventually() -> None:
    # A random model can emit bytes that never complete a character; they must not pile up.
    pieces, _ = _stream([0xFF] * 20 + [ord("x")])
    assert pieces[:7] == [""] * 7 and pieces[7] == "\ufffd" * 8
    assert "".join(pieces) == "\ufffd" * 20 + "x"


@pytest.mark.parametrize(
    ("text", "stop", "expected", "stopped"),
    [
        ("Paris\nLondon", ("\n",), "Paris", True),
        ("one, two. three", (". ", ","), "one", True),
        ("answer: 42 END more", ("END",), "answer: 42 ", True),
        ("an ENDING", ("ENDX",), "an ENDING", False),  # a prefix of the stop string is released at the end
        ("no stop here", ("zzz",), "no stop here", False),
    ],
)
def test_stream_stop_strings(text: str, stop: tuple[str, ...], expected: str, stopped: bool) -> None:
    pieces, did_stop = _stream(list(text.encode()), stop)
    assert "".join(pieces) == expected
    assert did_stop == stopped


def test_stream_never_emits_part_of_a_stop_string() -> None:
    # Everything emitted adds up to the text before the stop string: no piece of "<stop>" got out early.
    pieces, stopped = _stream(list(b"ab<st<stop>"), ("<stop>",))
    assert stopped and "".join(pieces) == "ab<st"
    assert pieces[2:5] == ["", "", ""]  # "<st" waited until it could no longer start "<stop>"


def test_stream_context_is_not_repeated() -> None:
    pieces, _ = _stream(list(b" world"), context=list(b"hello"))
    assert "".join(pieces) == " world"
