"""Bad input, as a careless or hostile user gives it: every case is refused with one line on stderr
(``jrtc: error: ...``), exit status 1 (2 for click's usage errors), no traceback and no file left behind,
or else handled (the case says how).

The cases are tables with readable ids. Each runs the CLI: in a subprocess where the process matters
(standard streams, limits, signals), through click's test runner otherwise, which runs the same ``main``
and hands back an exception that escaped instead of a traceback.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from jrt_fixtures import hf_config, random_state_dict, write_hf_checkpoint

import jrtc
from jrtc.cli import main
from jrtc.errors import JrtcError
from jrtc.export import build, onnx_graph
from jrtc.runtime import Engine, SamplingParams, build_prompt

MIX = ["conv", "pla", "swa", "conv"]
BASED = ["conv", "la", "swa", "conv"]
PROMPT = "ab:12, cd:34, ef:56. cd:"


# ---- fixtures: a small checkpoint, its engine, and an engine of another shape ------------------------
def _write_checkpoint(directory: Path, layer_types: list[str], seed: int = 0, **kw: Any) -> Path:
    hf = hf_config(layer_types, **kw)
    return write_hf_checkpoint(directory, hf, random_state_dict(hf, seed))


def _export(checkpoint: Path, out: Path, *options: str) -> Path:
    result = CliRunner().invoke(
        main, ["export", str(checkpoint), "-o", str(out), "--tokenizer", "bytes", "-q", *options]
    )
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("assets")
    checkpoint = _write_checkpoint(root / "ckpt", MIX)
    other = _write_checkpoint(root / "other-ckpt", ["pla", "swa"], seed=1, d_model=64, heads=4)
    return {
        "checkpoint": checkpoint,
        "engine": _export(checkpoint, root / "engine", "--max-prompt-len", "32", "--max-batch", "2"),
        "other-engine": _export(other, root / "other-engine", "--max-prompt-len", "32"),
    }


@dataclass
class Work:
    """A case's own directory (nothing may be left in it afterwards) and the shared assets."""

    dir: Path
    assets: dict[str, Path]

    def prompt(self, data: bytes = PROMPT.encode()) -> str:
        path = self.dir / "prompt.txt"
        path.write_bytes(data)
        return str(path)

    def engine(self, edit: Callable[[dict[str, Any]], None] | None = None) -> str:
        """A copy of the engine, its manifest edited by ``edit``."""
        copy_dir = Path(shutil.copytree(self.assets["engine"], self.dir / "engine"))
        if edit is not None:
            manifest = json.loads((copy_dir / "jrtc.json").read_text())
            edit(manifest)
            (copy_dir / "jrtc.json").write_text(json.dumps(manifest))
        return str(copy_dir)

    def hf_checkpoint(
        self,
        edit: Callable[[dict[str, Any]], None] = lambda hf: None,
        weights: Callable[[dict[str, torch.Tensor]], None] = lambda sd: None,
        layer_types: list[str] = MIX,
    ) -> str:
        hf = hf_config(layer_types)
        sd = random_state_dict(hf)
        weights(sd)
        edit(hf)
        return str(write_hf_checkpoint(self.dir / "hf", hf, sd))

    def jrtc_checkpoint(self, edit: Callable[[dict[str, Any]], None]) -> str:
        model = jrtc.load_checkpoint(self.assets["checkpoint"])
        jrtc.save_checkpoint(model, self.dir / "model.pt")
        payload = torch.load(self.dir / "model.pt", weights_only=True)
        edit(payload)
        torch.save(payload, self.dir / "model.pt")
        return str(self.dir / "model.pt")


@dataclass
class Case:
    """``argv(work)`` builds the command line (writing its inputs into the work directory)."""

    argv: Callable[[Work], list[str]]
    expect: tuple[str, ...] = ()  # fragments of the message
    status: int = 1
    process: bool = False  # run in a subprocess
    stdin: bytes | None = None  # None: no redirection; b"": empty
    stdout: str = "pipe"  # "pipe", "closed" (>&-) or "full" (> /dev/full)
    stdin_closed: bool = False
    file_size_limit: int | None = None  # RLIMIT_FSIZE, bytes
    handled: Callable[[Work, str], None] | None = None  # a case that succeeds: checks its stdout


def _field(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit setting ``path`` ("a.b" reaches into a dict) to ``value``, or deleting it for ``...``."""

    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is ...:
            del d[last]
        else:
            d[last] = value

    return edit


def _info_hf(path: str, value: Any, *expect: str) -> Case:
    return Case(
        lambda w: ["info", w.hf_checkpoint(edit=_field(path, value))], expect or (path.split(".")[-1],)
    )


def _info_pt(edit: Callable[[dict[str, Any]], None], *expect: str) -> Case:
    return Case(lambda w: ["info", w.jrtc_checkpoint(edit)], expect)


def _weights(key: str, value: Callable[[torch.Tensor], torch.Tensor], *expect: str) -> Case:
    def change(sd: dict[str, torch.Tensor]) -> None:
        sd[key] = value(sd[key])

    return Case(lambda w: ["info", w.hf_checkpoint(weights=change)], (key, *expect))


def _nan_at(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[3] = math.nan
    return t


FC1 = "transformer.layers.1.mlp.fc1.weight"

CHECKPOINT_CASES = {
    "n_layer-string": _info_hf("n_layer", "six", "n_layer", "integer"),
    "n_embd-null": _info_hf("n_embd", None, "n_embd", "integer"),
    "n_embd-negative": _info_hf("n_embd", -128, "n_embd", "at least 1"),
    "n_embd-float": _info_hf("n_embd", 32.0, "n_embd", "integer"),
    "n_embd-bool": _info_hf("n_embd", True, "n_embd", "integer"),
    "vocab_size-negative": _info_hf("vocab_size", -8, "vocab_size"),
    "n_head-zero": _info_hf("n_head", 0, "n_head"),
    "pla-heads-zero": _info_hf("alt_mixer.num_heads", 0, "alt_mixer.num_heads"),
    "pla-heads-missing": _info_hf("alt_mixer.num_heads", ..., "alt_mixer.num_heads", "no default"),
    "enc_length-zero": _info_hf("alt_mixer.enc_length", 0, "alt_mixer.enc_length"),
    "alt_mixer_layers-out-of-range": _info_hf("alt_mixer_layers", [99], "alt_mixer_layers", "99"),
    "alt_mixer_layers-negative": _info_hf("alt_mixer_layers", [-1], "alt_mixer_layers"),
    "alt_mixer_layers-string": _info_hf("alt_mixer_layers", "1", "alt_mixer_layers"),
    "window_size-zero": _info_hf("alt_mixer_2.window_size", 0, "window_size", "at least 2"),
    "window_size-one": _info_hf("alt_mixer_2.window_size", 1, "window_size", "at least 2"),
    "window_size-null": _info_hf("alt_mixer_2.window_size", None, "window_size", "integer"),
    "window_size-fraction": _info_hf("alt_mixer_2.window_size", 2.5, "window_size", "integer"),
    "rotary-fraction-two": _info_hf("rotary_emb_fraction", 2, "rotary"),
    "rotary-fraction-nan": _info_hf("rotary_emb_fraction", math.nan, "rotary_emb_fraction"),
    "norm-eps-string": _info_hf("layer_norm_epsilon", "small", "layer_norm_epsilon"),
    "norm-eps-zero": _info_hf("layer_norm_epsilon", 0, "layer_norm_epsilon"),
    "activation-left-out": _info_hf("activation_function", ..., "activation_function", "gelu_new"),
    "mixer-not-an-object": _info_hf("mixer", "BaseConv", "mixer"),
    "mixer-unknown-class": _info_hf("alt_mixer._target_", "zoo.Mamba", "unknown layer type", "Mamba"),
    "mixer-missing": _info_hf("mixer", ..., "no mixer"),
    "layernorm-instead-of-rmsnorm": _info_hf("rms_norm", False, "rms_norm"),
    "based-decay-projection": Case(
        lambda w: ["info", w.hf_checkpoint(_field("alt_mixer.use_decay_proj", True), layer_types=BASED)],
        ("alt_mixer.use_decay_proj", "decay"),
    ),
    "based-fixed-decay": Case(
        lambda w: ["info", w.hf_checkpoint(_field("fixed_decay", True), layer_types=BASED)],
        ("fixed_decay", "decay_const"),
    ),
    "n_embd-huge": _info_hf("n_embd", 10**9, "parameters", "weights file"),
    "n_layer-huge": _info_hf("n_layer", 10**5, "parameters", "weights file"),
    "n_layer-enormous": _info_hf("n_layer", 10**9, "parameters", "weights file"),
    "vocab-huge": _info_hf("vocab_size", 10**12, "parameters"),
    "config-not-an-object": Case(lambda w: ["info", _replace_config(w, "[1, 2]")], ("not a JSON object",)),
    "config-not-json": Case(lambda w: ["info", _replace_config(w, "{n_embd: 32")], ("config.json",)),
    "config-binary": Case(lambda w: ["info", _replace_config(w, "\udcff")], ("config.json",)),
    "weights-int64": _weights(FC1, lambda t: (t * 100).long(), "int64", "floating point"),
    "weights-bool": _weights(FC1, lambda t: t > 0, "bool"),
    "weights-nan": _weights(FC1, _nan_at, "NaN"),
    "weights-inf": _weights(FC1, lambda t: t / 0, "infinite"),
    "weights-wrong-shape": _weights(FC1, lambda t: t[:, :5], "shape"),
    "weights-missing-key": Case(
        lambda w: ["info", w.hf_checkpoint(weights=lambda sd: sd.pop(FC1))], ("missing keys", FC1)
    ),
    "weights-head-untied": Case(lambda w: ["info", _untied_head(w)], ("lm_head.weight", "ties")),
    "weights-not-tensors": Case(lambda w: ["info", _pickle_weights(w, {"a": [1, 2]})], ("named tensors",)),
    "weights-int-keys": Case(lambda w: ["info", _pickle_weights(w, {1: torch.zeros(2)})], ("named tensors",)),
    "pt-without-config": _info_pt(_field("config", ...), "'config'"),
    "pt-without-state_dict": _info_pt(_field("state_dict", ...), "'state_dict'"),
    "pt-config-not-an-object": _info_pt(_field("config", [1]), "JSON object"),
    "pt-pla_heads-zero": _info_pt(_field("config.pla_heads", 0), "pla_heads", "at least 1"),
    "pt-n_layer-string": _info_pt(_field("config.n_layer", "six"), "n_layer", "integer"),
    "pt-layer_types-short": _info_pt(_field("config.layer_types", ["conv"]), "layer types", "n_layer"),
    "pt-layer_types-string": _info_pt(_field("config.layer_types", "conv"), "layer_types"),
    "pt-d_model-huge": _info_pt(_field("config.d_model", 10**9), "parameters"),
    "pt-version-string": _info_pt(_field("version", "1"), "version"),
    "pt-version-future": _info_pt(_field("version", 99), "upgrade jrtc"),
    "pt-window-zero": _info_pt(_field("config.window_size", 0), "window_size"),
    "pt-pad-out-of-vocab": _info_pt(_field("config.pad_token_id", 999), "pad_token_id"),
    "checkpoint-missing": Case(lambda w: ["info", str(w.dir / "nope")], ("not found",)),
    "checkpoint-dev-null": Case(lambda w: ["info", "/dev/null"], ("cannot read",)),
    "checkpoint-dev-zero": Case(lambda w: ["info", "/dev/zero"], ("cannot read",)),
    "checkpoint-directory-empty": Case(lambda w: ["info", str(w.dir)], ("no config.json",)),
}


def _untied_head(work: Work) -> str:
    path = Path(work.hf_checkpoint())
    weights = torch.load(path / "pytorch_model.bin", weights_only=True)
    weights["model.lm_head.weight"] = 2 * weights["model.lm_head.weight"]
    torch.save(weights, path / "pytorch_model.bin")
    return str(path)


def _replace_config(work: Work, text: str) -> str:
    path = work.hf_checkpoint()
    (Path(path) / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    return path


def _pickle_weights(work: Work, state_dict: dict[Any, Any]) -> str:
    path = Path(work.hf_checkpoint())
    torch.save(state_dict | {"pad": torch.zeros(10**5)}, path / "pytorch_model.bin")
    return str(path)


def _run_engine(edit: Callable[[dict[str, Any]], None], *expect: str) -> Case:
    return Case(lambda w: ["run", w.engine(edit), "--prompt", w.prompt()], expect)


def _swap_graph(work: Work) -> str:
    """The engine with another model's graph, the checksum updated to match: only the graph check sees it."""
    engine = Path(work.engine())
    shutil.copy(work.assets["other-engine"] / "model.onnx", engine / "model.onnx")
    manifest = json.loads((engine / "jrtc.json").read_text())
    manifest["checksums"]["model.onnx"] = build.file_checksum(engine / "model.onnx")
    (engine / "jrtc.json").write_text(json.dumps(manifest))
    return str(engine)


def _manifest_text(work: Work, text: str) -> str:
    engine = Path(work.engine())
    (engine / "jrtc.json").write_text(text)
    return str(engine)


def _state(index: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(m: dict[str, Any]) -> None:
        m["state"][index][key] = value

    return edit


def _drop_state(m: dict[str, Any]) -> None:
    del m["state"][1]


def _reverse_inputs(m: dict[str, Any]) -> None:
    m["inputs"] = m["inputs"][::-1]


ENGINE_CASES = {
    "format_version-zero": _run_engine(_field("format_version", 0), "format_version"),
    "format_version-negative": _run_engine(_field("format_version", -1), "format_version"),
    "format_version-string": _run_engine(_field("format_version", "1"), "format_version"),
    "format_version-float": _run_engine(_field("format_version", 1.5), "format_version"),
    "format_version-bool": _run_engine(_field("format_version", True), "format_version"),
    "format_version-missing": _run_engine(_field("format_version", ...), "format_version"),
    "format_version-future": _run_engine(_field("format_version", 2), "upgrade jrtc"),
    "engine-leaves-directory": _run_engine(_field("engine", "../engine/model.onnx"), "engine", "inside"),
    "engine-absolute": _run_engine(_field("engine", "/etc/passwd"), "engine", "inside"),
    "engine-not-a-string": _run_engine(_field("engine", 5), "engine"),
    "tokenizer-leaves-directory": _run_engine(
        _field("tokenizer", "../x/tokenizer.json"), "tokenizer", "inside"
    ),
    "checksum-name-leaves-directory": _run_engine(
        _field("checksums", {"../../etc/passwd": "sha256:0"}), "checksums", "inside"
    ),
    "max_prompt_len-zero": _run_engine(_field("max_prompt_len", 0), "max_prompt_len", "at least 1"),
    "max_prompt_len-string": _run_engine(_field("max_prompt_len", "32"), "max_prompt_len", "integer"),
    "max_prompt_len-below-encoder": _run_engine(_field("max_prompt_len", 8), "enc_length"),
    "max_batch-zero": _run_engine(_field("max_batch", 0), "max_batch"),
    "vocab_size-zero": _run_engine(_field("vocab_size", 0), "vocab_size"),
    "vocab-padded-below-vocab": _run_engine(_field("vocab_size_padded", 100), "vocab_size_padded"),
    "vocab-padded-not-the-graph": _run_engine(_field("vocab_size_padded", 264), "logits", "264"),
    "pad-outside-vocab": _run_engine(_field("pad_token_id", 256), "pad_token_id"),
    "eos-outside-vocab": _run_engine(_field("eos_token_id", -3), "eos_token_id"),
    "state-shape-edited": _run_engine(_state(1, "shape", [2, 153, 8]), "does not match", "state.layers.1.kv"),
    "state-shape-zero": _run_engine(_state(1, "shape", [2, 0, 16]), "state layers.1.kv"),
    "state-dtype-edited": _run_engine(_state(1, "dtype", "float16"), "does not match", "float16"),
    "state-dtype-unknown": _run_engine(_state(1, "dtype", "complex128"), "dtype"),
    "state-removed": _run_engine(_drop_state, "lists inputs"),
    "state-not-a-list": _run_engine(_field("state", {}), "state"),
    "inputs-reordered": _run_engine(_reverse_inputs, "inputs"),
    "field-missing": _run_engine(_field("enc_length", ...), "enc_length"),
    "graph-swapped": Case(lambda w: ["run", _swap_graph(w), "--prompt", w.prompt()], ("does not match",)),
    "manifest-not-json": Case(
        lambda w: ["run", _manifest_text(w, "{"), "--prompt", w.prompt()], ("cannot read",)
    ),
    "manifest-a-list": Case(
        lambda w: ["run", _manifest_text(w, "[]"), "--prompt", w.prompt()], ("JSON object",)
    ),
    "engine-missing": Case(lambda w: ["run", str(w.dir / "nope"), "--prompt", w.prompt()], ("not found",)),
}


def _run(*options: str, stdin: bytes | None = None, **kw: Any) -> Case:
    def argv(w: Work) -> list[str]:
        return ["run", str(w.assets["engine"]), "--prompt", w.prompt(), "--max-new-tokens", "4", *options]

    return Case(argv, stdin=stdin, **kw)


def _stdin_prompt(data: bytes | None, *expect: str, closed: bool = False, **kw: Any) -> Case:
    return Case(
        lambda w: ["run", str(w.assets["engine"]), "--prompt", "-", "--max-new-tokens", "4", "--quiet"],
        expect,
        process=True,
        stdin=data,
        stdin_closed=closed,
        **kw,
    )


def _same_as_greedy(work: Work, stdout: str) -> None:
    engine = Engine.load(work.assets["engine"])
    greedy = "".join(t.text for t in engine.session().generate(PROMPT, SamplingParams(max_new_tokens=4)))
    assert stdout == greedy


RUN_CASES = {
    "temperature-nan": _run("--temperature", "nan", expect=("temperature", "finite")),
    "temperature-inf": _run("--temperature", "inf", expect=("temperature", "finite")),
    "temperature-negative": _run("--temperature", "-1", status=2, expect=("--temperature",)),
    "temperature-underflows": _run("--temperature", "1e-320", "--quiet", handled=_same_as_greedy),
    "seed-negative": _run("--temperature", "1", "--seed", "-1", expect=("seed", "at least 0")),
    "seed-not-a-number": _run("--seed", "x", status=2, expect=("--seed",)),
    "top-p-nan": _run("--temperature", "1", "--top-p", "nan", expect=("top-p",)),
    "top-p-zero": _run("--temperature", "1", "--top-p", "0", status=2, expect=("--top-p",)),
    "top-k-negative": _run("--top-k", "-1", status=2, expect=("--top-k",)),
    "top-k-without-temperature": _run("--top-k", "5", expect=("--temperature",)),
    "max-new-tokens-zero": _run("--max-new-tokens", "0", status=2, expect=("--max-new-tokens",)),
    "max-new-tokens-text": _run("--max-new-tokens", "many", status=2, expect=("--max-new-tokens",)),
    "question-invalid-utf8": _run("--question", "\udcff\udcfe", process=True, expect=("question", "UTF-8")),
    "question-empty": _run("--question", "", expect=("question", "empty")),
    "stop-invalid-utf8": _run("--stop", "\udcff", process=True, expect=("stop", "UTF-8")),
    "stop-empty": _run("--stop", "", expect=("stop", "empty")),
    "repeat-without-question": _run("--repeat", "3", expect=("--repeat", "question")),
    "repeat-zero": _run("--question", "q", "--repeat", "0", status=2, expect=("--repeat",)),
    "pad-unknown": _run("--pad", "right", status=2, expect=("--pad",)),
    "unknown-option": _run("--bogus", status=2, expect=("--bogus",)),
    "prompt-from-stdin": _stdin_prompt(PROMPT.encode(), handled=lambda w, out: _same_as_greedy(w, out)),
    "prompt-stdin-empty": _stdin_prompt(b"", "is empty"),
    "prompt-stdin-binary": _stdin_prompt(b"\x00\x01\x02", "binary"),
    "prompt-stdin-latin1": _stdin_prompt(b"caf\xe9", "UTF-8"),
    "prompt-stdin-closed": _stdin_prompt(None, "standard input", closed=True),
    "prompt-directory": Case(
        lambda w: ["run", str(w.assets["engine"]), "--prompt", str(w.dir)], ("cannot read",)
    ),
    "prompt-dev-zero": Case(
        lambda w: ["run", str(w.assets["engine"]), "--prompt", "/dev/zero"], ("larger than 64 MiB",)
    ),
    "prompt-dev-null": Case(lambda w: ["run", str(w.assets["engine"]), "--prompt", "/dev/null"], ("empty",)),
    "prompt-missing": Case(
        lambda w: ["run", str(w.assets["engine"]), "--prompt", "nope.txt"], ("not found",)
    ),
    "prompt-binary": Case(
        lambda w: ["run", str(w.assets["engine"]), "--prompt", w.prompt(b"\x7fELF\x00")], ("binary",)
    ),
    "stdout-closed": _run(process=True, stdout="closed", expect=("standard output is closed",)),
    "stdout-full": _run(process=True, stdout="full", expect=("standard output", "No space left")),
    "stdout-full-json": _run("--json", process=True, stdout="full", expect=("No space left",)),
    "info-stdout-full": Case(
        lambda w: ["info", str(w.assets["checkpoint"])], ("No space left",), process=True, stdout="full"
    ),
    "version-stdout-full": Case(lambda w: ["--version"], ("No space left",), process=True, stdout="full"),
    "help-stdout-full": Case(lambda w: ["run", "--help"], ("No space left",), process=True, stdout="full"),
    "help-stdout-closed": Case(lambda w: ["--help"], ("closed",), process=True, stdout="closed"),
    "unknown-command": Case(lambda w: ["bogus"], ("bogus",), status=2),
}


def _export_case(*options: str, output: Callable[[Work], str] | None = None, **kw: Any) -> Case:
    def argv(w: Work) -> list[str]:
        out = output(w) if output else str(w.dir / "out")
        return ["export", str(w.assets["checkpoint"]), "-o", out, "--tokenizer", "bytes", "-q", *options]

    return Case(argv, **kw)


def _a_file(work: Work) -> str:
    (work.dir / "file").write_text("x")
    return str(work.dir / "file" / "engine")


def _a_directory(work: Work) -> str:
    (work.dir / "photos").mkdir()
    (work.dir / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    return str(work.dir / "photos")


EXPORT_CASES = {
    "output-under-a-file": _export_case(output=_a_file, expect=("is a file",)),
    "output-in-proc": _export_case(output=lambda w: "/proc/jrtc-engine", expect=("cannot write",)),
    "output-other-directory": _export_case(output=_a_directory, expect=("not a jrtc engine directory",)),
    "output-file-too-large": _export_case(process=True, file_size_limit=200_000, expect=("File too large",)),
    "max-prompt-len-zero": _export_case("--max-prompt-len", "0", expect=("--max-prompt-len", "at least 1")),
    "max-prompt-len-negative": _export_case("--max-prompt-len", "-5", expect=("--max-prompt-len",)),
    "max-prompt-len-below-encoder": _export_case("--max-prompt-len", "8", expect=("enc_length",)),
    "max-prompt-len-huge": _export_case("--max-prompt-len", str(10**7), expect=("grows with its square",)),
    "max-prompt-len-enormous": _export_case("--max-prompt-len", str(10**30), expect=("--max-prompt-len",)),
    "max-batch-zero": _export_case("--max-batch", "0", expect=("--max-batch", "at least 1")),
    "max-batch-huge": _export_case("--max-batch", str(10**15), expect=("state pool",)),
    "target-not-built": _export_case(
        "--target", "h100", expect=("TensorRT is not installed", "--target cuda")
    ),
    "target-cuda-without-gpu": _export_case("--target", "cuda", expect=("needs an NVIDIA GPU",)),
    "target-unknown": _export_case("--target", "tpu", status=2, expect=("--target",)),
    "tokenizer-missing": _export_case("--tokenizer", "nope.json", expect=("not found",)),
    "nan-weights": Case(
        lambda w: [
            "export",
            w.hf_checkpoint(weights=lambda sd: sd.update({FC1: _nan_at(sd[FC1])})),
            "-o",
            str(w.dir / "out"),
            "--tokenizer",
            "bytes",
            "-q",
        ],
        (FC1, "NaN"),
    ),
}

ALL_CASES = {
    **{f"checkpoint/{k}": v for k, v in CHECKPOINT_CASES.items()},
    **{f"engine/{k}": v for k, v in ENGINE_CASES.items()},
    **{f"run/{k}": v for k, v in RUN_CASES.items()},
    **{f"export/{k}": v for k, v in EXPORT_CASES.items()},
}


def _files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


def _execute(case: Case, argv: list[str]) -> tuple[int, str, str]:
    if not case.process:
        result = CliRunner().invoke(main, argv, input=case.stdin)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        return result.exit_code, result.stdout, result.stderr

    def child_setup() -> None:
        if case.file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_size_limit, resource.RLIM_INFINITY))
        if case.stdout == "closed":
            os.close(1)
        if case.stdin_closed:
            os.close(0)

    stdout: Any = subprocess.PIPE
    if case.stdout == "full":
        stdout = open("/dev/full", "w")  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "jrtc.cli", *[a.encode("utf-8", "surrogateescape") for a in argv]],
            input=case.stdin,
            stdin=None if case.stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.PIPE,
            preexec_fn=child_setup,
            timeout=300,
        )
    finally:
        if case.stdout == "full":
            stdout.close()
    out = proc.stdout.decode() if isinstance(proc.stdout, bytes) else ""
    return proc.returncode, out, proc.stderr.decode(errors="replace")


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_bad_input(
    name: str, assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = ALL_CASES[name]
    monkeypatch.chdir(tmp_path)
    work = Work(tmp_path, assets)
    argv = case.argv(work)
    before = _files(tmp_path)
    status, stdout, stderr = _execute(case, argv)
    assert "Traceback" not in stderr, stderr
    if case.handled is not None:
        assert status == 0, stderr
        case.handled(work, stdout)
    elif case.status == 2:  # click's usage error: its usage lines, then "Error: ..."
        assert status == 2, stderr
        assert stderr.splitlines()[-1].startswith("Error:"), stderr
        assert all(fragment in stderr for fragment in case.expect), stderr
    else:
        assert status == 1, stderr
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("jrtc: error: "), stderr
        assert all(fragment in lines[0] for fragment in case.expect), stderr
    assert _files(tmp_path) == before  # nothing left behind, half-written or not


# ---- cases that need more than one command -----------------------------------------------------------
def _export_process(checkpoint: Path, out: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "jrtc.cli",
        "export",
        str(checkpoint),
        "-o",
        str(out),
        "--tokenizer",
        "bytes",
        "-q",
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_killed_export_is_cleaned_by_the_next(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engine"
    process = _export_process(assets["checkpoint"], out)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".engine.*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the trace
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert [p.name.endswith(".partial") for p in tmp_path.iterdir()] == [True]  # what the kill left
    _export(assets["checkpoint"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]
    Engine.load(out)


def test_two_exports_racing_to_one_output(assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "engine"
    processes = [_export_process(assets["checkpoint"], out) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in processes]
    assert results == [(0, ""), (0, "")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]
    Engine.load(out)


def test_disk_full_while_writing(
    assets: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_graph, "save", full)
    result = CliRunner().invoke(
        main, ["export", str(assets["checkpoint"]), "-o", str(tmp_path / "e"), "--tokenizer", "bytes", "-q"]
    )
    assert result.exit_code == 1 and result.stderr.strip().endswith("No space left on device")
    assert result.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []


def test_sizes_are_refused_before_allocation(tmp_path: Path) -> None:
    hf = hf_config(MIX)
    sd = random_state_dict(hf)
    for field_name, value in (("n_embd", 10**9), ("n_layer", 10**5), ("n_layer", 10**9)):
        path = write_hf_checkpoint(tmp_path / f"{field_name}-{value}", hf | {field_name: value}, sd)
        start = time.perf_counter()
        with pytest.raises(JrtcError, match="parameters"):
            jrtc.load_checkpoint(path)
        assert time.perf_counter() - start < 1.0


# ---- the Python API ---------------------------------------------------------------------------------
API_CASES = {
    "max-new-tokens-nan": (dict(max_new_tokens=math.nan), "max new tokens"),
    "max-new-tokens-float": (dict(max_new_tokens=4.0), "max new tokens"),
    "temperature-nan": (dict(temperature=math.nan), "temperature"),
    "temperature-string": (dict(temperature="hot"), "temperature"),
    "top-k-fraction": (dict(top_k=1.5), "top-k"),
    "top-p-above-one": (dict(top_p=1.5), "top-p"),
    "seed-negative": (dict(seed=-1), "seed"),
    "seed-float": (dict(seed=1.5), "seed"),
    "stop-number": (dict(stop=5), "stop"),
    "stop-list-with-number": (dict(stop=["a", 5]), "stop"),
    "stop-empty-string": (dict(stop=""), "empty"),
    "stop_on_eos-string": (dict(stop_on_eos="no"), "stop_on_eos"),
}


@pytest.mark.parametrize("name", list(API_CASES))
def test_bad_sampling_params(name: str) -> None:
    kwargs, fragment = API_CASES[name]
    with pytest.raises(JrtcError, match=fragment) as info:
        SamplingParams(**kwargs)
    assert "\n" not in str(info.value)


def test_stop_given_as_one_string_is_one_stop_string(assets: dict[str, Path]) -> None:
    """Not one stop string per character, as iterating the string would make it."""
    assert SamplingParams(stop="ab").stop == ("ab",)
    session = Engine.load(assets["engine"]).session()

    def text(stop: Any) -> str:
        params = SamplingParams(temperature=1.0, seed=3, max_new_tokens=60, stop=stop)
        return "".join(t.text for t in session.generate(PROMPT, params))

    free = text(())
    stop = free[-2:]
    assert text(stop) == text((stop,)) == free[: free.index(stop)]


SESSION_CASES: dict[str, tuple[Callable[[Engine], object], str]] = {
    "token-ids-fractional": (lambda e: e.session().submit(e.session().request([1.5, 2])), "vocabulary"),
    "token-ids-strings": (lambda e: e.session().submit(e.session().request(["a"])), "vocabulary"),
    "token-ids-negative": (lambda e: e.session().submit(e.session().request([-1])), "vocabulary"),
    "params-a-dict": (lambda e: e.session().request("x", {"temperature": 1}), "SamplingParams"),
    "max_batch-string": (lambda e: e.session(max_batch="2"), "max_batch"),
    "max_batch-zero": (lambda e: e.session(max_batch=0), "max_batch"),
    "max_batch-above-engine": (lambda e: e.session(max_batch=99), "max_batch"),
    "repeat-fractional": (lambda e: build_prompt("context", "q", repeat=1.5), "repeat"),
    "pad-mode-unknown": (lambda e: build_prompt("context", pad="right"), "pad mode"),
}


@pytest.mark.parametrize("name", list(SESSION_CASES))
def test_bad_session_calls(name: str, assets: dict[str, Path]) -> None:
    call, fragment = SESSION_CASES[name]
    with pytest.raises(JrtcError, match=fragment) as info:
        call(Engine.load(assets["engine"]))
    assert "\n" not in str(info.value)


def test_a_state_pool_too_large_to_allocate(assets: dict[str, Path], tmp_path: Path) -> None:
    engine_dir = Path(shutil.copytree(assets["engine"], tmp_path / "engine"))
    manifest = json.loads((engine_dir / "jrtc.json").read_text())
    (engine_dir / "jrtc.json").write_text(json.dumps(manifest | {"max_batch": 10**12}))
    with pytest.raises(JrtcError, match="state pool"):
        Engine.load(engine_dir).session()


def test_bad_text_in_the_api(assets: dict[str, Path]) -> None:
    session = Engine.load(assets["engine"]).session()
    with pytest.raises(JrtcError, match="UTF-8"):
        session.request("caf\udce9")
    with pytest.raises(JrtcError, match="question"):
        build_prompt("context", question="\udcff")
    with pytest.raises(JrtcError, match="the prompt must be text"):
        build_prompt(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(JrtcError, match="the context must be text"):
        build_prompt(b"bytes", question="q")  # type: ignore[arg-type]


def test_a_session_used_from_two_threads(assets: dict[str, Path]) -> None:
    engine = Engine.load(assets["engine"])
    session = engine.session()
    inside, release = threading.Event(), threading.Event()
    run = session.pool.run

    def blocking_run(*args: Any) -> Any:
        inside.set()
        release.wait(30)
        return run(*args)

    session.pool.run = blocking_run  # type: ignore[method-assign]
    session.submit(session.request(PROMPT, SamplingParams(max_new_tokens=3)))  # the step below makes 2
    worker = threading.Thread(target=session.step)
    worker.start()
    try:
        assert inside.wait(30)
        with pytest.raises(RuntimeError, match="another thread"):
            session.submit(session.request(PROMPT))
        with pytest.raises(RuntimeError, match="another thread"):
            session.step()
    finally:
        release.set()
        worker.join(30)
    session.pool.run = run  # type: ignore[method-assign]
    assert [t.finish_reason for t in session.stream([])] == ["length"]  # the first request, intact
