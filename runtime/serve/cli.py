"""``jrtc serve``: the HTTP server over one engine, or with ``--ray`` its Ray Serve deployment.

FastAPI, uvicorn and Ray are imported only here, when the command runs (``pip install 'jrtc[serve]'``,
``'jrtc[ray]'`` for ``--ray``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from jrtc.errors import JrtcError
from jrtc.runtime.engine import Engine
from jrtc.runtime.serve import DEFAULT_MAX_QUEUE


def _needs(extra: str, exc: ImportError) -> JrtcError:
    return JrtcError(f"jrtc serve needs {exc.name or exc}: install it with pip install 'jrtc[{extra}]'")


def _autoscaling(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JrtcError(f"--autoscaling is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise JrtcError(
            '--autoscaling must be a JSON object, e.g. \'{"min_replicas": 1, "max_replicas": 4}\''
        )
    return config


@click.command("serve")
@click.argument("engine", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port."
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    help="Sequences decoded together: the state pool's slots (default: the engine's max_batch).",
)
@click.option(
    "--max-queue",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_QUEUE,
    show_default=True,
    help="Requests that may wait for a slot; past that the server answers 429.",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds that running sequences get to finish before they are cancelled.",
)
@click.option("--model-name", help="The model's name in responses (default: the engine directory's name).")
@click.option("--ray", "use_ray", is_flag=True, help="Serve as a Ray Serve deployment of replicas.")
@click.option(
    "--replicas", type=click.IntRange(min=1), help="With --ray: replicas, each with its own engine."
)
@click.option(
    "--autoscaling",
    help='With --ray: Ray Serve\'s autoscaling_config as JSON, e.g. \'{"min_replicas": 1, "max_replicas": 4}\'.',
)
@click.option(
    "--address",
    help="With --ray: the Ray cluster to join (its head's HOST:6379, or 'auto'); default: a new local one.",
)
@click.option("--quiet", is_flag=True, help="Log warnings and errors only (no access log).")
def serve_command(
    engine: Path,
    host: str,
    port: int,
    max_batch: int | None,
    max_queue: int,
    shutdown_timeout: float,
    model_name: str | None,
    use_ray: bool,
    replicas: int | None,
    autoscaling: str | None,
    address: str | None,
    quiet: bool,
) -> None:
    """Serve the engine at ENGINE over an OpenAI-compatible HTTP API.

    POST /v1/completions (streamed with "stream": true), GET /v1/models, /health, /metrics (Prometheus).
    SIGTERM stops it gracefully (exit status 0).
    """
    if not use_ray and (replicas is not None or autoscaling is not None or address is not None):
        raise JrtcError("--replicas, --autoscaling and --address go with --ray")
    if use_ray and port == 0:
        raise JrtcError("--ray needs a fixed --port (Ray Serve's proxy takes no port 0)")
    try:
        from jrtc.runtime.serve import app
    except ImportError as exc:
        raise _needs("serve", exc) from None
    autoscaling_config = _autoscaling(autoscaling)
    name = model_name or app.model_name_of(engine)
    if use_ray:
        try:
            from jrtc.runtime.serve import ray_serve

            ray_serve.import_ray(local_cluster=address is None)
        except ImportError as exc:
            raise _needs("ray", exc) from None
        ray_serve.serve_on_ray(
            engine,
            host=host,
            port=port,
            max_batch=max_batch,
            max_queue=max_queue,
            model_name=name,
            replicas=replicas,
            autoscaling=autoscaling_config,
            address=address,
            shutdown_timeout=shutdown_timeout,
            quiet=quiet,
        )
        return
    session = Engine.load(engine).session(max_batch)
    app.run_server(
        session,
        host=host,
        port=port,
        max_queue=max_queue,
        model_name=name,
        shutdown_timeout=shutdown_timeout,
        quiet=quiet,
    )
