"""Loading an engine directory (docs/interfaces.md): manifest, checksums, backend, tokenizer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from jrtc.errors import JrtcError, check_int
from jrtc.runtime.backends import Backend, GraphTensor, load_backend
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
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise JrtcError(f"{path} has no valid format_version (a positive integer), got {version!r}")
        if version > FORMAT_VERSION:
            raise JrtcError(
                f"{path} has format version {version}, newer than this jrtc reads ({FORMAT_VERSION}); upgrade jrtc"
            )
        missing = [name for name in _REQUIRED if name not in raw]
        if missing:
            raise JrtcError(f"{path} is missing the field {missing[0]!r}")
        try:
            vocab_size = check_int("vocab_size", raw["vocab_size"], minimum=1)
            manifest = cls(
                format_version=version,
                target=_text("target", raw["target"]),
                backend=_text("backend", raw["backend"]),
                engine=_file_name("engine", raw["engine"]),
                tokenizer=_file_name("tokenizer", raw["tokenizer"]),
                vocab_size=vocab_size,
                vocab_size_padded=check_int(
                    "vocab_size_padded", raw["vocab_size_padded"], minimum=vocab_size
                ),
                enc_length=check_int("enc_length", raw["enc_length"], minimum=0),
                pad_token_id=check_int(
                    "pad_token_id", raw["pad_token_id"], minimum=0, maximum=vocab_size - 1
                ),
                eos_token_id=None
                if raw["eos_token_id"] is None
                else check_int("eos_token_id", raw["eos_token_id"], minimum=0, maximum=vocab_size - 1),
                max_batch=check_int("max_batch", raw["max_batch"], minimum=1),
                max_prompt_len=check_int("max_prompt_len", raw["max_prompt_len"], minimum=1),
                state=_state_specs(raw["state"]),
                inputs=_names("inputs", raw["inputs"]),
                outputs=_names("outputs", raw["outputs"]),
                checksums=_checksums(raw.get("checksums", {})),
                raw=raw,
            )
        except JrtcError as exc:
            raise JrtcError(f"{path}: {exc}") from None
        return manifest

    def check_graph(self, engine_file: Path, inputs: list[GraphTensor], outputs: list[GraphTensor]) -> None:
        """The engine's graph must have the manifest's inputs and outputs: names, order, dtypes and shapes.

        Backends call this with what their graph declares, so an edited or swapped file fails at load.
        """
        expected_in = [
            GraphTensor("input_ids", (None, None), np.dtype(np.int64)),
            GraphTensor("start_pos", (None,), np.dtype(np.int64)),
            GraphTensor("num_pad", (None,), np.dtype(np.int64)),
            *(GraphTensor(f"state.{s.name}", (None, *s.shape), np.dtype(s.dtype)) for s in self.state),
        ]
        expected_out = [
            GraphTensor("logits", (None, self.vocab_size_padded), np.dtype(np.float32)),
            *(GraphTensor(f"next.{s.name}", (None, *s.shape), np.dtype(s.dtype)) for s in self.state),
        ]
        where = f"{engine_file} does not match its {MANIFEST}"
        for kind, have, want in (("inputs", inputs, expected_in), ("outputs", outputs, expected_out)):
            names = [t.name for t in want]
            listed = list(getattr(self, kind))
            if listed != names:
                raise JrtcError(f"{MANIFEST} lists {kind} {listed}, but its state list gives {names}")
            if [t.name for t in have] != names:
                raise JrtcError(f"{where}: graph {kind} {[t.name for t in have]}, expected {names}")
            for got, exp in zip(have, want, strict=True):
                shape_ok = len(got.shape) == len(exp.shape) and all(
                    g is None or e is None or g == e for g, e in zip(got.shape, exp.shape, strict=True)
                )
                if got.dtype != exp.dtype or not shape_ok:
                    raise JrtcError(f"{where}: {got.name} is {got} in the graph, {exp} in the manifest")


_REQUIRED = (
    "target",
    "backend",
    "engine",
    "tokenizer",
    "vocab_size",
    "vocab_size_padded",
    "enc_length",
    "pad_token_id",
    "eos_token_id",
    "max_batch",
    "max_prompt_len",
    "state",
    "inputs",
    "outputs",
)


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise JrtcError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _file_name(name: str, value: Any) -> str:
    """A path inside the engine directory: relative, and no ``..`` (a manifest must not reach outside)."""
    parts = PurePosixPath(_text(name, value)).parts
    if PurePosixPath(value).is_absolute() or "\\" in value or any(p in ("..", "") for p in parts):
        raise JrtcError(f"{name} {value!r} is not a file inside the engine directory")
    return value


def _state_specs(value: Any) -> tuple[StateSpec, ...]:
    if not isinstance(value, list) or not value:
        raise JrtcError(f"state must be a non-empty list of tensors, got {value!r}")
    specs = []
    for entry in value:
        if not isinstance(entry, dict) or not {"name", "shape", "dtype"} <= set(entry):
            raise JrtcError(f"state entries need a name, shape and dtype, got {entry!r}")
        name = _text("state name", entry["name"])
        if not isinstance(entry["shape"], list):
            raise JrtcError(f"state {name} has no shape list, got {entry['shape']!r}")
        shape = tuple(check_int(f"state {name} dimensions", d, minimum=1) for d in entry["shape"])
        if entry["dtype"] not in _STATE_DTYPES:
            raise JrtcError(
                f"state {name} has dtype {entry['dtype']!r}; engines use {', '.join(_STATE_DTYPES)}"
            )
        specs.append(StateSpec(name, shape, entry["dtype"]))
    if len({s.name for s in specs}) != len(specs):
        raise JrtcError("state lists a tensor name twice")
    return tuple(specs)


_STATE_DTYPES = ("float32", "bfloat16", "float16", "int64")


def _names(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise JrtcError(f"{name} must be a list of tensor names, got {value!r}")
    return tuple(value)


def _checksums(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise JrtcError(f"checksums must be an object of file names, got {value!r}")
    return {_file_name("checksums entry", k): _text(f"checksum of {k}", v) for k, v in value.items()}


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
                try:
                    actual = file_checksum(directory / name)
                except OSError as exc:
                    raise JrtcError(f"cannot read {directory / name}: {exc.strerror or exc}") from None
                if actual != expected:
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
