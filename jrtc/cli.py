"""The ``jrtc`` command line. A ``JrtcError`` anywhere becomes one line on stderr and exit status 1;
click's usage errors (an unknown option, a bad value) keep click's status 2."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from jrtc import __version__
from jrtc.errors import JrtcError
from jrtc.export.cli import build_command, export_command
from jrtc.runtime.cli import run_command
from jrtc.runtime.eval_cli import eval_command
from jrtc.runtime.serve.cli import serve_command


class _Group(click.Group):
    """Runs a command so that every error the user can fix is one line on stderr and exit status 1.

    That is a ``JrtcError`` from any command, and a standard output that is closed (``>&-``) or cannot
    take the output (``> /dev/full``). click's own usage errors keep their status 2.
    """

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if sys.stdout is None:  # Python's stdout is None when the process starts with descriptor 1 closed
            _fail("standard output is closed; redirect it to a file or /dev/null")
        try:
            try:
                return super().main(*args, **kwargs)
            finally:
                sys.stdout.flush()  # output still buffered fails here, before the interpreter's own flush
        except OSError as exc:
            # Commands turn their own file errors into JrtcError, so these can only come from the output.
            if exc.errno not in _WRITE_ERRORS and not _stdout_broken():
                raise
            # Send what is still buffered to /dev/null, so that exiting does not print the error again.
            with contextlib.suppress(OSError, ValueError):  # a stdout without a descriptor has no exit flush
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            _fail(f"cannot write to standard output: {exc.strerror or exc}")

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JrtcError as e:
            _fail(str(e))


_WRITE_ERRORS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _stdout_broken() -> bool:
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def _fail(message: str) -> NoReturn:
    click.echo(f"jrtc: error: {message}", err=True)
    sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="jrtc")
def main() -> None:
    """Compile JRT-RNN language models into inference engines and run them."""


def _engine_summary(directory: Path) -> dict[str, Any]:
    """``jrtc info`` of an engine directory: its manifest, and the model its config describes."""
    import torch

    from jrtc.config import JRTConfig
    from jrtc.export.cli import weights_summary
    from jrtc.model import JRTModel
    from jrtc.runtime.engine import MANIFEST, Manifest
    from jrtc.summary import describe

    manifest = Manifest.read(directory / MANIFEST)
    with torch.device("meta"):  # shapes only: the weights are in the engine
        model = JRTModel(JRTConfig.from_dict(manifest.raw.get("model")))
    weights = weights_summary(manifest.raw)
    summary = {
        "engine": f"{manifest.engine} (target {manifest.target}, backend {manifest.backend})",
        **describe(model),
        **weights,
    }
    summary["dtype"] = weights["weights"].split(" ")[0]
    return summary


@main.command()
@click.argument("path", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def info(path: str, as_json: bool) -> None:
    """Describe a checkpoint or an engine directory: layer mix, shapes, parameters, recurrent state per
    sequence; for an engine also its target and what its weights are (float32, int8 or int4)."""
    import json

    from jrtc.runtime.engine import MANIFEST

    if (Path(path) / MANIFEST).is_file():
        summary = _engine_summary(Path(path))
    else:
        from jrtc.checkpoint import load_checkpoint
        from jrtc.summary import describe

        summary = describe(load_checkpoint(path))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for key, value in summary.items():
        click.echo(f"{key:>26}: {value}")


main.add_command(export_command, "export")
main.add_command(run_command, "run")
main.add_command(eval_command, "eval")
main.add_command(serve_command, "serve")
main.add_command(build_command, "build")


if __name__ == "__main__":
    main()
