"""Loading an engine directory (docs/interfaces.md): manifest, checksums, backend, tokenizer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from jrtc.errors import JrtcError
from jrtc.runtime.backends import Backend, load_backend
from jrtc.runtime.session import Session
from jrtc.tokenizer import check_tokenizer_fits, load_tokenizer

FORMAT_VERSION = 1
MANIFEST = "jrtc.json"


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a sequence (without the batch dimension)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float32", "bfloat16", ... (numpy has no bfloat16: each backend maps the name)


@dataclass(frozen=True)
class Manifest:
    """The fields of ``jrtc.json`` that the runtime uses."""

    format_version: int
    target: str
    backend: str
    engine: str
    tokenizer: str
    vocab_size: int
    vocab_size_padded: int
    enc_length: int
    pad_token_id: int
    eos_token_id: int | None
    max_batch: int
    max_prompt_len: int
    state: tuple[StateSpec, ...]
    inputs: tuple[str, ...]  # the step graph's input names, in call order
    outputs: tuple[str, ...]
    checksums: dict[str, str]
    raw: dict[str, Any]

    @classmethod
    def read(cls, path: Path) -> Manifest:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise JrtcError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise JrtcError(f"{path} is not a jrtc manifest (expected a JSON object)")
        # The version decides how the rest reads, so it is checked before any other field.
        version = raw.get("format_version")
        if not isinstance(version, int):
            raise JrtcError(f"{path} has no integer format_version")
        if version > FORMAT_VERSION:
            raise JrtcError(
                f"{path} has format version {version}, newer than this jrtc reads ({FORMAT_VERSION}); upgrade jrtc"
            )
        try:
            return cls(
                format_version=version,
                target=str(raw["target"]),
                backend=str(raw["backend"]),
                engine=str(raw["engine"]),
                tokenizer=str(raw["tokenizer"]),
                vocab_size=int(raw["vocab_size"]),
                vocab_size_padded=int(raw["vocab_size_padded"]),
                enc_length=int(raw["enc_length"]),
                pad_token_id=int(raw["pad_token_id"]),
                eos_token_id=None if raw["eos_token_id"] is None else int(raw["eos_token_id"]),
                max_batch=int(raw["max_batch"]),
                max_prompt_len=int(raw["max_prompt_len"]),
                state=tuple(
                    StateSpec(str(s["name"]), tuple(int(d) for d in s["shape"]), str(s["dtype"]))
                    for s in raw["state"]
                ),
                inputs=tuple(str(name) for name in raw["inputs"]),
                outputs=tuple(str(name) for name in raw["outputs"]),
                checksums={str(k): str(v) for k, v in raw.get("checksums", {}).items()},
                raw=raw,
            )
        except KeyError as exc:
            raise JrtcError(f"{path} is missing the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise JrtcError(f"{path} has an invalid field: {exc}") from None


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class Engine:
    """An exported model ready to run: ``Engine.load(path)``, then :meth:`session`."""

    def __init__(self, directory: Path, manifest: Manifest, backend: Backend, tokenizer: Tokenizer) -> None:
        self.directory = directory
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Engine:
        """Load the engine directory ``path`` (or a file inside it, e.g. its ``model.onnx``).

        ``verify`` checks the files against the manifest's checksums (a full read of each file).
        """
        path = Path(path)
        if not path.exists():
            raise JrtcError(f"engine not found: {path}")
        directory = path if path.is_dir() else path.parent
        if not (directory / MANIFEST).is_file():
            raise JrtcError(f"{directory} is not a jrtc engine directory: it has no {MANIFEST}")
        manifest = Manifest.read(directory / MANIFEST)
        for name in dict.fromkeys([manifest.engine, manifest.tokenizer, *manifest.checksums]):
            if not (directory / name).is_file():
                raise JrtcError(f"engine directory {directory} is missing {name}")
        if verify:
            for name, expected in manifest.checksums.items():
                if file_checksum(directory / name) != expected:
                    raise JrtcError(
                        f"{directory / name} is corrupted: its checksum does not match {MANIFEST}"
                    )
        if manifest.max_prompt_len < manifest.enc_length:
            raise JrtcError(
                f"{directory / MANIFEST}: max_prompt_len {manifest.max_prompt_len} is shorter than "
                f"enc_length {manifest.enc_length}, so a prompt's encoder would not fit its first call"
            )
        tokenizer = load_tokenizer(directory / manifest.tokenizer)
        check_tokenizer_fits(
            tokenizer, manifest.vocab_size, manifest.pad_token_id, str(directory / manifest.tokenizer)
        )
        backend = load_backend(directory / manifest.engine, manifest)
        return cls(directory, manifest, backend, tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def session(self, max_batch: int | None = None) -> Session:
        """A session with a state pool of ``max_batch`` sequences (default: the manifest's)."""
        return Session(self, max_batch)
