"""``jrtc serve --ray``: the same app as a Ray Serve deployment of replicas, each with its own engine.

Every replica runs the app of ``app.py``, whose lifespan loads the engine and starts an engine loop in
that replica, so each has its own state pool. Ray's proxy sends each HTTP request to one replica, which
holds the sequence until it ends (a streamed completion too). Replicas come from ``num_replicas`` or
from Ray Serve's ``autoscaling_config`` (passed through as given). The same code runs on a
multi-machine cluster (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the
others, then ``jrtc serve ENGINE --ray --address HEAD:6379``); the engine directory must then be at the
same path on every node. ``app_builder`` is the entry point for Ray's own CLI and config files.
Ray itself is imported inside the functions: a local cluster's settings must be in the environment first.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from jrtc.errors import JrtcError
from jrtc.runtime.engine import Engine
from jrtc.runtime.serve import DEFAULT_MAX_QUEUE
from jrtc.runtime.serve.app import build_app, model_name_of
from jrtc.runtime.session import Session

APP_NAME = "jrtc"


def open_session(engine_path: str, max_batch: int | None) -> Session:
    """What each replica runs at start: its own engine and state pool."""
    return Engine.load(engine_path).session(max_batch)


def deployment(
    engine_path: str | Path,
    *,
    max_batch: int | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    model_name: str | None = None,
    replicas: int | None = None,
    autoscaling: dict[str, Any] | None = None,
    shutdown_timeout: float | None = None,
) -> Any:
    """The Ray Serve application (``serve.run`` it): one deployment of ``replicas`` replicas, or of as
    many as ``autoscaling`` (Ray Serve's ``autoscaling_config``) decides."""
    from ray import serve

    if replicas is not None and autoscaling is not None:
        raise JrtcError("give either a replica count or an autoscaling config, not both")
    engine_path = str(Path(engine_path).resolve())
    # Checked here, so that a bad engine fails now with one line rather than in every replica.
    slots = Engine.load(engine_path, verify=False).session(max_batch).max_batch
    app = build_app(
        partial(open_session, engine_path, max_batch), max_queue, model_name or model_name_of(engine_path)
    )

    @serve.ingress(app)
    class JrtcReplica:
        """One replica: the app's lifespan gives it its engine loop."""

    options: dict[str, Any] = {
        "name": APP_NAME,
        # One more than a replica's slots and queue hold: when every replica is full, the next request
        # still reaches one and gets its 429 at once, rather than waiting in Ray's own queue.
        "max_ongoing_requests": slots + max_queue + 1,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas or 1
    if shutdown_timeout is not None:
        options["graceful_shutdown_timeout_s"] = shutdown_timeout
    try:
        return serve.deployment(JrtcReplica, **options).bind()
    except ValidationError as exc:  # Ray's own check of the options
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise JrtcError(f"Ray Serve refused the deployment options: {where}: {error['msg']}") from None


def app_builder(args: dict[str, str]) -> Any:
    """For Ray's CLI and config files::

    serve run jrtc.runtime.serve.ray_serve:app_builder engine=DIR [max_batch=N] [max_queue=N]
        [model_name=NAME] [replicas=N] [autoscaling='{"min_replicas": 1, "max_replicas": 4}']
    """
    known = {"engine", "max_batch", "max_queue", "model_name", "replicas", "autoscaling"}
    if "engine" not in args or set(args) - known:
        raise JrtcError(
            f"app_builder takes engine=DIR and optionally {', '.join(sorted(known - {'engine'}))}"
        )

    def number(key: str) -> int | None:
        return None if key not in args else int(args[key])

    return deployment(
        args["engine"],
        max_batch=number("max_batch"),
        max_queue=DEFAULT_MAX_QUEUE if "max_queue" not in args else int(args["max_queue"]),
        model_name=args.get("model_name"),
        replicas=number("replicas"),
        autoscaling=json.loads(args["autoscaling"]) if "autoscaling" in args else None,
    )


def import_ray(local_cluster: bool) -> None:
    """Import Ray Serve (ImportError if it is not installed) after setting what Ray reads at import.

    A cluster that jrtc starts itself is for this machine alone: its processes talk over the loopback
    interface (Ray otherwise binds them to the machine's network address), and none reports usage
    statistics. Both settings give way to the caller's environment.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if local_cluster:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # 0: local Ray only, on 127.0.0.1
    import ray.serve  # noqa: F401


def serve_on_ray(
    engine_path: Path,
    *,
    host: str,
    port: int,
    max_batch: int | None,
    max_queue: int,
    model_name: str,
    replicas: int | None,
    autoscaling: dict[str, Any] | None,
    address: str | None,
    shutdown_timeout: float,
    quiet: bool,
) -> None:
    """Run the deployment until SIGTERM or Ctrl-C, on a new local Ray cluster or the one at ``address``
    (call :func:`import_ray` first).

    A cluster started here is shut down at the end (``serve.shutdown()``, then ``ray.shutdown()``); on a
    joined cluster only this app is deleted. Never ``ray stop``: it stops every cluster on the machine.
    """
    import logging

    import ray
    from ray import serve

    app = deployment(
        engine_path,
        max_batch=max_batch,
        max_queue=max_queue,
        model_name=model_name,
        replicas=replicas,
        autoscaling=autoscaling,
        shutdown_timeout=shutdown_timeout,
    )
    ray.init(
        address=address or "local",
        include_dashboard=False if address is None else None,
        logging_level=logging.WARNING if quiet else logging.INFO,
        log_to_driver=not quiet,
    )
    # After ray.init, which installs a SIGTERM handler of its own (exit 1).
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        if not quiet:
            how = f"autoscaling {json.dumps(autoscaling)}" if autoscaling else f"{replicas or 1} replicas"
            print(
                f"jrtc serve: {model_name} on http://{host}:{port} (Ray Serve, {how})",
                file=sys.stderr,
                flush=True,
            )
        while not stop.wait(timeout=1.0):
            pass
    finally:
        if address is None:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
