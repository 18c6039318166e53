"""``jrtc export``: compile a checkpoint into an engine directory."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from jrtc.errors import JrtcError
from jrtc.export import BYTES_TOKENIZER, DEFAULT_MAX_BATCH, DTYPES, FORMATS, TARGETS

if TYPE_CHECKING:
    from jrtc.export.build import Exported


def _size(n: int) -> str:
    size, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"


def summary_lines(exported: Exported) -> list[str]:
    m = exported.manifest
    state = m["state_bytes_per_sequence"]
    lines = [f"engine directory {exported.directory} (target {m['target']}, backend {m['backend']})"]
    lines += [f"  {name:<20} {_size(size):>10}" for name, size in exported.files.items()]
    lines.append(
        f"state per sequence: {_size(state)} in {len(m['state'])} tensors; "
        f"pool of {m['max_batch']}: {_size(state * m['max_batch'])}"
    )
    lines.append(
        "inputs: input_ids [B, L] int64, start_pos [B] int64, num_pad [B] int64, "
        f"{len(m['state'])} state.* tensors (L <= max_prompt_len {m['max_prompt_len']})"
    )
    if m.get("state_in_place"):
        lines.append(
            f"outputs: logits [B, {m['vocab_size_padded']}] float32; the state.* inputs update in place"
        )
        lines += [
            f"program {name}: B {b[0]}..{b[1]}, L {n[0]}..{n[1]}"
            for name, shape in m["programs"].items()
            for b, n in [(shape["batch"], shape["length"])]
        ]
    else:
        lines.append(
            f"outputs: logits [B, {m['vocab_size_padded']}] float32, {len(m['state'])} next.* tensors"
        )
    return lines


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--target", type=click.Choice(TARGETS), default="cpu", show_default=True, help="What to build for."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Engine directory [default: <checkpoint>-<target>].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Engine format: onnx (ONNX Runtime; for h100/h200 the unbuilt plugin graph), aoti (AOTInductor package) "
    "or plan (TensorRT) [default: onnx for cpu, aoti for cuda, plan for h100/h200].",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Weight dtype [default: float32 for cpu, bfloat16 for cuda, h100, h200]; the PLA state is always float32.",
)
@click.option("--max-batch", type=int, default=DEFAULT_MAX_BATCH, show_default=True, help="State-pool size.")
@click.option(
    "--max-prompt-len", type=int, help="Largest L of one prefill call [default: max(512, enc_length)]."
)
@click.option(
    "--tokenizer",
    metavar="PATH|bytes",
    help=f"A tokenizer.json, or '{BYTES_TOKENIZER}' for the byte-level one [default: tokenizer.json beside the checkpoint].",
)
@click.option(
    "--no-build",
    is_flag=True,
    help="h100/h200: write the plugin graph, its PTX and the manifest without TensorRT; `jrtc build` finishes.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def export_command(
    checkpoint: Path,
    target: str,
    output: Path | None,
    fmt: str | None,
    dtype: str | None,
    max_batch: int,
    max_prompt_len: int | None,
    tokenizer: str | None,
    no_build: bool,
    quiet: bool,
) -> None:
    """Compile CHECKPOINT (an HF directory or a jrtc .pt) into an engine directory for `jrtc run`."""
    from jrtc.export.build import export_engine  # torch and the exporter load only when exporting

    if no_build:
        if target not in ("h100", "h200") or fmt not in (None, "onnx"):
            raise JrtcError("--no-build is for --target h100|h200 (which then writes --format onnx); drop it")
        fmt = "onnx"

    def progress(message: str) -> None:
        if not quiet:
            click.echo(f"jrtc export: {message}", err=True)

    if output is None:
        output = Path(f"{checkpoint.resolve().stem}-{target}")
    exported = export_engine(
        checkpoint, output, target, max_batch, max_prompt_len, tokenizer, progress, fmt=fmt, dtype=dtype
    )
    if not quiet:
        click.echo("\n".join(summary_lines(exported)))


@click.command()
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--opt-level",
    type=click.IntRange(0, 5),
    default=3,
    show_default=True,
    help="TensorRT builder optimization level.",
)
@click.option(
    "--timing-cache", type=click.Path(path_type=Path), help="[default: ~/.cache/jrtc/tensorrt-timing.cache]"
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def build_command(directory: Path, opt_level: int, timing_cache: Path | None, quiet: bool) -> None:
    """Build the TensorRT engine of DIRECTORY (written by `jrtc export --target h100|h200 --no-build`) on this
    machine: it needs TensorRT 10.9+ and the H100/H200 the engine will run on."""
    from jrtc.export.trt_engine import finish_directory

    def progress(message: str) -> None:
        if not quiet:
            click.echo(f"jrtc build: {message}", err=True)

    manifest = finish_directory(directory, progress, opt_level, timing_cache)
    if not quiet:
        click.echo(f"{directory / manifest['engine']}: TensorRT {manifest['tensorrt']} on {manifest['gpu']}")
