"""Write an engine directory (docs/interfaces.md): the engine, ``jrtc.json`` and ``tokenizer.json``.

Everything is written into a temporary directory beside the target and renamed into place at the end, so a
failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

import jrtc
from jrtc.checkpoint import load_checkpoint
from jrtc.errors import JrtcError, check_int
from jrtc.export import BYTES_TOKENIZER, DEFAULT_MAX_BATCH, DEFAULT_MAX_PROMPT_LEN, TARGETS
from jrtc.export.step_graph import io_names
from jrtc.export.targets import TARGET_MODULES, Built, target_module
from jrtc.model import JRTModel
from jrtc.plugins.pla.naive import FEATURE_LAYOUT

# The reader's own constants and checksum, so that writer and reader agree by construction.
from jrtc.runtime.engine import FORMAT_VERSION, MANIFEST, file_checksum
from jrtc.tokenizer import byte_level_tokenizer_json, check_tokenizer_fits, load_tokenizer

TOKENIZER = "tokenizer.json"


@dataclass(frozen=True)
class Exported:
    """What an export wrote, for the summary."""

    directory: Path
    files: dict[str, int]  # name -> bytes
    manifest: dict[str, Any]


def check_target(target: str, fmt: str | None) -> tuple[Any, str]:
    """The target's module and the format to write; refuses, in one line, what this build cannot produce."""
    if target not in TARGET_MODULES:
        raise JrtcError(f"unknown target {target!r}; jrtc targets: {', '.join(TARGETS)}")
    module = target_module(target)
    fmt = fmt or module.FORMATS[0]
    if fmt not in module.FORMATS:
        raise JrtcError(f"target {target} writes {' or '.join(module.FORMATS)}, not --format {fmt}")
    return module, fmt


def resolve_tokenizer(checkpoint: Path, tokenizer: str | None) -> str:
    """The ``tokenizer.json`` text to ship: ``bytes``, a file, or the one beside the checkpoint."""
    if tokenizer == BYTES_TOKENIZER:
        return byte_level_tokenizer_json()
    if tokenizer is None:
        beside = (checkpoint if checkpoint.is_dir() else checkpoint.parent) / TOKENIZER
        if not beside.is_file():
            raise JrtcError(
                f"no tokenizer given and none beside the checkpoint ({beside}); pass --tokenizer PATH "
                "(a tokenizer.json) or --tokenizer bytes (byte-level)"
            )
        path = beside
    else:
        path = Path(tokenizer)
    load_tokenizer(path)  # a one-line error for a missing or malformed file
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JrtcError(f"cannot read tokenizer {path}: {e}") from None


def build_manifest(
    model: JRTModel, target: str, built: Built, max_batch: int, max_prompt_len: int, checksums: dict[str, str]
) -> dict[str, Any]:
    cfg = model.config
    spec = {name: v for name, v in model.state_spec().items() if name != "pos"}  # pos is the runtime's
    state_bytes = model.state_bytes()
    inputs, _ = io_names(model)
    fields = dict(built.fields)
    return {
        "format_version": FORMAT_VERSION,
        "jrtc_version": jrtc.__version__,
        "target": target,
        "backend": built.backend,
        "engine": built.engine,
        "model": cfg.to_dict(),
        "vocab_size": cfg.vocab_size,
        "vocab_size_padded": cfg.vocab_size_padded,
        "enc_length": cfg.enc_length,
        "pad_token_id": cfg.pad_token_id,
        "eos_token_id": cfg.eos_token_id,
        "max_batch": max_batch,
        "max_prompt_len": max_prompt_len,
        "state": [
            {"name": name, "shape": list(shape), "dtype": str(dtype).removeprefix("torch.")}
            for name, (shape, dtype) in spec.items()
        ],
        "state_bytes_per_sequence": sum(state_bytes[name] for name in spec),
        "feature_layout": FEATURE_LAYOUT,
        "inputs": inputs,
        "outputs": built.outputs,
        "tokenizer": TOKENIZER,
        "checksums": checksums,
        **fields,
        "built_with": {"torch": torch.__version__, **fields.get("built_with", {})},
    }


def check_memory(
    model: JRTModel,
    max_batch: int,
    max_prompt_len: int,
    memory: int | None,
    prefill_bytes: Callable[[int], int],
    growth: str,
) -> None:
    """Refuse a state pool or a prefill call that cannot fit in ``memory`` bytes (None: unknown);
    ``prefill_bytes(L)`` is the target's estimate of one prefill call's scratch memory, ``growth`` how it
    grows with L, for the message."""
    if memory is None:
        return
    pool = max_batch * sum(model.state_bytes().values())
    if pool > memory:
        raise JrtcError(
            f"--max-batch {max_batch} needs a state pool of {pool / 2**30:.3g} GiB, more than this machine's "
            f"{memory / 2**30:.1f} GiB of memory: use at most {max(memory // (pool // max_batch), 1)}"
        )
    if prefill_bytes(max_prompt_len) > memory:
        fits = max_prompt_len
        while fits > 1 and prefill_bytes(fits) > memory:
            fits //= 2
        raise JrtcError(
            f"--max-prompt-len {max_prompt_len} needs about {prefill_bytes(max_prompt_len) / 2**30:.3g} GiB "
            f"per prefill call ({growth}), more than this machine's {memory / 2**30:.1f} GiB "
            f"of memory: use at most about {fits} (longer prompts are prefilled in chunks of it)"
        )


def check_output(output: Path) -> None:
    """``-o`` may name a new directory or an engine directory to replace, nothing else."""
    if output.exists() and not (output / MANIFEST).is_file():
        raise JrtcError(f"{output} exists and is not a jrtc engine directory; remove it or pick another -o")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (flock: released by the kernel if the process dies)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _new_staging(output: Path) -> tuple[Path, int]:
    """A fresh hidden staging directory beside ``output``, locked for as long as this export runs.

    Leftovers of killed exports to the same output (their staging directories, which nothing holds locked
    any more, and retired engine directories) are removed first. Call with the parent directory locked,
    so that no other export's staging directory is seen between its creation and its lock.
    """
    for leftover in output.parent.glob(f".{glob.escape(output.name)}.*"):
        if leftover.name.endswith(".partial"):
            fd = os.open(leftover, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a running export's
            finally:
                os.close(fd)
        elif ".old-" not in leftover.name:
            continue
        shutil.rmtree(leftover, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the engine directory is an ordinary one
    lock = os.open(staging, os.O_RDONLY)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return staging, lock


def _install(staging: Path, output: Path) -> None:
    """Move the finished directory into place; an older engine directory there is replaced.

    Call with the parent directory locked: two exports to one output then install one after the other.
    """
    check_output(output)  # something else may have appeared there while this export ran
    if not output.exists():
        staging.rename(output)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
    output.rename(retired / output.name)
    staging.rename(output)
    shutil.rmtree(retired, ignore_errors=True)


def _write_error(output: Path, exc: OSError) -> JrtcError:
    return JrtcError(f"cannot write the engine directory {output}: {exc.strerror or exc}")


def export_engine(
    checkpoint: Path,
    output: Path,
    target: str = "cpu",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_prompt_len: int | None = None,
    tokenizer: str | None = None,
    progress: Callable[[str], None] = lambda message: None,
    fmt: str | None = None,
    dtype: str | None = None,
) -> Exported:
    """Export ``checkpoint`` for ``target`` (in format ``fmt``, weights in ``dtype``: the target's defaults
    when None) into the engine directory ``output``."""
    module, fmt = check_target(target, fmt)
    placement = module.place(fmt, dtype)
    check_output(output)
    check_int("--max-batch", max_batch, minimum=1)
    progress(f"tokenizer: {tokenizer or 'beside the checkpoint'}")
    tokenizer_json = resolve_tokenizer(checkpoint, tokenizer)
    progress(f"loading {checkpoint}")
    model = load_checkpoint(
        checkpoint, dtype=placement.dtype, device=placement.device, use_kernels=placement.use_kernels
    )
    cfg = model.config
    check_tokenizer_fits(Tokenizer.from_str(tokenizer_json), cfg.vocab_size, cfg.pad_token_id)
    if max_prompt_len is None:
        max_prompt_len = max(DEFAULT_MAX_PROMPT_LEN, cfg.enc_length)
    if check_int("--max-prompt-len", max_prompt_len, minimum=1) < cfg.enc_length:
        raise JrtcError(
            f"--max-prompt-len {max_prompt_len} is shorter than enc_length {cfg.enc_length}: "
            "a prompt's first call must hold its whole encoder"
        )
    check_memory(
        model,
        max_batch,
        max_prompt_len,
        module.memory(),
        lambda length: module.prefill_bytes(cfg, length),
        module.PREFILL_GROWTH,
    )

    output = output.resolve()
    above = next(p for p in output.parents if p.exists())
    if not above.is_dir():
        raise JrtcError(f"cannot write the engine directory {output}: {above} is a file, not a directory")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with _locked(output.parent):
            staging, lock = _new_staging(output)
    except OSError as exc:
        raise _write_error(output, exc) from None
    try:
        built = module.build(model, staging, fmt, max_batch, max_prompt_len, progress)
        (staging / TOKENIZER).write_text(tokenizer_json, encoding="utf-8")
        progress("checksums and manifest")
        names = [*built.files, TOKENIZER]
        checksums = {name: file_checksum(staging / name) for name in names}
        manifest = build_manifest(model, target, built, max_batch, max_prompt_len, checksums)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        files = {name: (staging / name).stat().st_size for name in [*names, MANIFEST]}
        with _locked(output.parent):
            _install(staging, output)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(output, exc) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return Exported(output, files, manifest)
