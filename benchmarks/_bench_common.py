"""Helpers shared by the kernel benchmarks: timing, bandwidth, versions, JSON output."""

from __future__ import annotations

import datetime
import json
import os
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# The benchmarks run on CUDA; on a machine without a GPU they run as a smoke test of the scripts themselves
# (set TRITON_INTERPRET=1 and pass a large --scale), with wall-clock timing.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, *args: object) -> None:
        if not self.quiet:
            print(*args, flush=True)


def cuda_time_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10) -> float:
    """Median of per-call CUDA-event timings after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    if DEVICE != "cuda":
        import time

        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(gib: float = 2.0, reps: int = 20) -> float:
    """Device-to-device copy rate in bytes/s, counting bytes read plus bytes written."""
    n = int(gib * 2**30) // 4 if DEVICE == "cuda" else 2**22
    src = torch.empty(n, dtype=torch.float32, device=DEVICE).uniform_()
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), warmup=3, reps=reps)
    src = dst = None
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return 2 * n * 4 / (ms * 1e-3)


def environment() -> dict[str, Any]:
    import triton

    try:
        import fla  # type: ignore[import-not-found]

        fla_version = getattr(fla, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - optional dependency, report why it is missing
        fla_version = f"unavailable ({type(exc).__name__}: {exc})"
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu = {
            "gpu": torch.cuda.get_device_name(0),
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        }
    else:
        gpu = {"gpu": "cpu-smoke-test (Triton interpreter; timings meaningless)"}
    return {
        **gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "fla": fla_version,
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def gpu_slug(name: str) -> str:
    slug = "".join(c.lower() if c.isalnum() else "-" for c in name.replace("NVIDIA ", ""))
    return "-".join(part for part in slug.split("-") if part) or "gpu"


def write_json(name: str, payload: dict[str, Any], out_dir: str | None) -> Path:
    directory = Path(out_dir) if out_dir else RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{gpu_slug(payload['env']['gpu'])}.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def repo_on_path() -> None:
    """Let ``python benchmarks/x.py`` import ``jrtc.plugins`` from a plain checkout (no install)."""
    root = Path(__file__).resolve().parent.parent
    try:
        import jrtc.plugins.pla  # noqa: F401
    except ImportError:
        if str(root) not in sys.path:
            sys.path.insert(0, str(root))
        import jrtc

        extra = os.path.join(os.environ.get("TMPDIR", "/tmp"), "jrtc_plugins_shim")
        os.makedirs(extra, exist_ok=True)
        link = os.path.join(extra, "plugins")
        if not os.path.exists(link):
            os.symlink(root / "plugins", link)
        jrtc.__path__.append(extra)  # jrtc.plugins -> <repo>/plugins, as the installed package maps it
