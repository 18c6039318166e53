"""``jrtc serve``: an OpenAI-compatible HTTP server over one engine, and the same app on Ray Serve.

protocol.py (requests and responses) · loop.py (the engine loop: the session's one caller) · metrics.py
(Prometheus) · app.py (routes, uvicorn) · ray_serve.py (replicas) · cli.py (the command). Nothing here is
imported by ``jrtc.runtime`` itself: FastAPI, uvicorn and Ray load only when a server starts.
"""

# Requests that may wait for a slot before new ones get 429 (``jrtc serve --max-queue``).
DEFAULT_MAX_QUEUE = 128
