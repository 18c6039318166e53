"""``jrtc run``: generate from an engine, streaming to stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from jrtc.errors import JrtcError
from jrtc.runtime.engine import Engine
from jrtc.runtime.prompt import PAD_MODES, build_prompt
from jrtc.runtime.sampling import SamplingParams
from jrtc.runtime.session import Stats

MAX_PROMPT_BYTES = 64 << 20


def read_prompt_file(path: Path) -> str:
    """The prompt file's text (``-``: standard input); missing, empty or binary files are a :class:`JrtcError`."""
    try:
        if str(path) == "-":
            if sys.stdin is None:
                raise JrtcError("--prompt - reads standard input, which is closed")
            data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        else:
            with path.open("rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
    except FileNotFoundError:
        raise JrtcError(f"prompt file not found: {path}") from None
    except OSError as exc:
        raise JrtcError(f"cannot read prompt file {path}: {exc.strerror}") from None
    if len(data) > MAX_PROMPT_BYTES:  # /dev/zero, or a file that would take days to prefill
        raise JrtcError(f"prompt file {path} is larger than {MAX_PROMPT_BYTES >> 20} MiB")
    if b"\0" in data:
        raise JrtcError(f"prompt file {path} is binary, not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JrtcError(f"prompt file {path} is not UTF-8 text") from None
    if not text.strip():
        raise JrtcError(f"prompt file {path} is empty")
    return text


def _stats_line(stats: Stats) -> str:
    padded = f" ({stats.prefill_tokens} with padding)" if stats.prefill_tokens != stats.prompt_tokens else ""
    return (
        f"[jrtc] prompt {stats.prompt_tokens} tokens{padded}, prefill {stats.prefill_ms:.1f} ms, "
        f"{stats.generated_tokens} generated, decode {stats.decode_tokens_per_s:.1f} tokens/s, "
        f"state {stats.state_bytes / 2**20:.2f} MiB/sequence, finished by {stats.finish_reason}"
    )


@click.command("run")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--prompt",
    "prompt_file",
    required=True,
    type=click.Path(path_type=Path, allow_dash=True),
    help="Text file ('-': standard input): the prompt, or with --question the context.",
)
@click.option("--question", help="Ask this about the prompt file's text, as a JRT-Prompt.")
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    help="Copies of the context in the JRT-Prompt (default 2; 1 disables). Needs --question.",
)
@click.option(
    "--pad",
    type=click.Choice(PAD_MODES),
    default="left",
    show_default=True,
    help="Fill of prompts shorter than the encoder: masked spaces, or copies of the context.",
)
@click.option("--show-prompt", is_flag=True, help="Print the prompt as built (to stderr) before generating.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object per token ({id, text}) and a final {stats} object.",
)
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 is greedy."
)
@click.option("--top-k", type=click.IntRange(min=0), default=0, help="Sample from the k likeliest tokens.")
@click.option(
    "--top-p",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True),
    default=1.0,
    help="Sample from the likeliest tokens holding this much probability.",
)
@click.option("--seed", type=int, help="Seed for sampling, for reproducible output.")
@click.option("--stop", multiple=True, help="Stop before this text (repeatable).")
@click.option("--quiet", is_flag=True, help="No stats on stderr.")
def run_command(
    path: Path,
    prompt_file: Path,
    question: str | None,
    repeat: int | None,
    pad: str,
    show_prompt: bool,
    as_json: bool,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None,
    stop: tuple[str, ...],
    quiet: bool,
) -> None:
    """Generate from the engine at PATH (its directory or its engine file), streaming to stdout."""
    if temperature == 0.0 and (top_k or top_p < 1.0):
        raise JrtcError("--top-k and --top-p apply when sampling: add --temperature (e.g. 1.0)")
    prompt = build_prompt(read_prompt_file(prompt_file), question, repeat, pad)
    params = SamplingParams(temperature, top_k, top_p, seed, max_new_tokens, stop)
    engine = Engine.load(path)
    session = engine.session(max_batch=1)
    request = session.request(prompt, params)
    if show_prompt:
        enc = engine.manifest.enc_length
        short = max(enc - len(request.prompt), 0)
        how = (
            "" if not short else f" after {short} {'masked spaces' if pad == 'left' else 'tokens of context'}"
        )
        click.echo(f"--- prompt: {len(request.prompt)} tokens{how} ---\n{prompt.text}\n---", err=True)
    for token in session.stream([request]):
        if as_json:
            sys.stdout.write(json.dumps({"id": token.id, "text": token.text}) + "\n")
        else:
            sys.stdout.write(token.text)
        sys.stdout.flush()
    stats = request.stats
    if as_json:
        sys.stdout.write(json.dumps({"stats": stats.to_dict()}) + "\n")
    if not quiet:
        # The line break goes to stderr too, so stdout holds exactly the completion.
        click.echo("\n" + _stats_line(stats), err=True)
