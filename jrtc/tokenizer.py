"""Tokenizers in HF ``tokenizers`` format: the built-in byte-level one, loading, and the pad-id rule.

No torch here: the runtime loads tokenizers through this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from jrtc.errors import JrtcError

BYTE_VOCAB_SIZE = 256


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which the ByteLevel pre-tokenizer emits."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(BYTE_VOCAB_SIZE):
        if b not in table:
            table[b] = chr(BYTE_VOCAB_SIZE + shifted)
            shifted += 1
    return table


def byte_level_tokenizer_json() -> str:
    """The tokenizer of byte-vocabulary models as ``tokenizer.json`` text: token id b is byte b.

    A BPE model without merges over the ByteLevel alphabet: the pre-tokenizer maps each byte of the
    UTF-8 text to its printable stand-in, the vocabulary maps that stand-in back to the byte's value, and
    the ByteLevel decoder reverses the mapping, so any text round-trips.
    """
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    spec = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        # No regex split: without merges every byte is its own token anyway, and one piece is faster.
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    return json.dumps(spec, ensure_ascii=False)


def byte_level_tokenizer() -> Tokenizer:
    """The byte-level tokenizer, ready to use."""
    return Tokenizer.from_str(byte_level_tokenizer_json())


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json``; a missing or unreadable file is a :class:`JrtcError`."""
    path = Path(path)
    if not path.is_file():
        raise JrtcError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JrtcError(f"cannot read tokenizer {path}: {reason}") from None


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id that prompts are left-padded with: a single space (220 for GPT-2, 32 for bytes).

    JRT-RNN was evaluated with prompts left-padded by the space token (reference jrt-model.md §2.5).
    """
    ids = tokenizer.encode(" ", add_special_tokens=False).ids
    if len(ids) != 1:
        raise JrtcError(f"the tokenizer has no single token for a space (it encodes ' ' as {ids})")
    return ids[0]


def check_tokenizer_fits(
    tokenizer: Tokenizer, vocab_size: int, pad_id: int, name: str = "the tokenizer"
) -> None:
    """A :class:`JrtcError` unless every id of ``tokenizer`` is in the model's vocabulary and a space is
    the model's pad token (the runtime pads prompts with the tokenizer's space)."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size > vocab_size:
        raise JrtcError(
            f"{name} does not fit the model: it has {size} tokens, the model's vocabulary {vocab_size}"
        )
    space = pad_token_id(tokenizer)
    if space != pad_id:
        raise JrtcError(
            f"{name} does not fit the model: it encodes a space as {space}, the model pads with {pad_id}"
        )
