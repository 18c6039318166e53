"""The ``jrtc`` command line. A ``JrtcError`` anywhere becomes one line on stderr and exit status 1."""

from __future__ import annotations

import sys
from typing import Any

import click

from jrtc import __version__
from jrtc.errors import JrtcError
from jrtc.export.cli import export_command
from jrtc.runtime.cli import run_command
from jrtc.runtime.eval_cli import eval_command


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except JrtcError as e:
            click.echo(f"jrtc: error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="jrtc")
def main() -> None:
    """Compile JRT-RNN language models into inference engines and run them."""


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def info(checkpoint: str, as_json: bool) -> None:
    """Describe a checkpoint: layer mix, shapes, parameters, recurrent state per sequence."""
    import json

    from jrtc.checkpoint import load_checkpoint
    from jrtc.summary import describe

    summary = describe(load_checkpoint(checkpoint))
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    for key, value in summary.items():
        click.echo(f"{key:>26}: {value}")


main.add_command(export_command, "export")
main.add_command(run_command, "run")
main.add_command(eval_command, "eval")


if __name__ == "__main__":
    main()
