"""Build ``engine.plan`` from an engine directory's plugin graph (``jrtc build DIR``, and ``jrtc export
--target h100|h200`` where TensorRT is installed).

The plugins are registered from the manifest's records and their PTX (``jrtc.plugins.tensorrt``), then
Polygraphy's loaders do the rest: TensorRT's ONNX parser (strongly typed), two optimization profiles
(decode: L = 1, B up to ``max_batch``; prefill: 2 <= L <= ``max_prompt_len``), the builder optimization
level, a timing cache, and in-place plugin outputs (``PreviewFeature.ALIASED_PLUGIN_IO_10_03``, TensorRT
10.3+) for the short-conv state. The plan is written to a temporary name and renamed.

Written to the documented TensorRT 10.9+/11.x and Polygraphy 0.49+ APIs; never run against a real TensorRT
(none can be installed on the project's machines): README, "TensorRT".
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jrtc.errors import JrtcError
from jrtc.runtime.backends import first_line

MIN_TENSORRT = (10, 9)  # tensorrt.plugin.aot_impl
PLAN = "engine.plan"
NEED_CAPABILITY = (9, 0)  # the plugins' PTX is sm_90a
DEFAULT_OPT_LEVEL = 3  # TensorRT's own default; 5 searches longest


def tensorrt_module() -> Any:
    """``tensorrt``, 10.9 or newer; one line saying what to do otherwise."""
    try:
        import tensorrt as trt
    except ImportError:
        raise JrtcError(
            "TensorRT is not installed: building an engine needs the tensorrt Python package (10.9 or newer; "
            "pip install 'jrtc[tensorrt]', whose libraries come from NVIDIA's package index) and the H100/H200 "
            "it will run on; without them, export with --target cuda"
        ) from None
    have = tuple(int(x) for x in trt.__version__.split(".")[:2])
    if have < MIN_TENSORRT:
        raise JrtcError(
            f"TensorRT {trt.__version__} is too old: the plugins need tensorrt.plugin.aot_impl, TensorRT "
            f"{MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} or newer (pip install -U 'jrtc[tensorrt]')"
        )
    return trt


def gpu() -> tuple[str, list[int]]:
    """The name and compute capability of the GPU the engine is built for (torch's view of device 0)."""
    import torch

    if not torch.cuda.is_available():
        raise JrtcError(
            "building a TensorRT engine needs the GPU it will run on, and torch sees no CUDA GPU here"
        )
    return torch.cuda.get_device_name(), list(torch.cuda.get_device_capability())


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "jrtc" / "tensorrt-timing.cache"


def shapes(manifest: Mapping[str, Any], profile: str) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each graph input's (min, opt, max) shape in ``profile``."""
    ranges = manifest["profiles"][profile]
    (b0, b1, b2), (l0, l1, l2) = ranges["batch"], ranges["length"]
    out = {"input_ids": ((b0, l0), (b1, l1), (b2, l2))}
    out.update({name: ((b0,), (b1,), (b2,)) for name in ("start_pos", "num_pad")})
    for state in manifest["state"]:
        out[f"state.{state['name']}"] = tuple((b, *state["shape"]) for b in (b0, b1, b2))
    return out


def build_engine(
    directory: Path,
    manifest: Mapping[str, Any],
    progress: Callable[[str], None] = lambda message: None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Build ``directory/engine.plan`` from the graph and plugins ``manifest`` describes; the manifest fields
    the build adds."""
    trt = tensorrt_module()
    try:
        import polygraphy
    except ImportError:
        raise JrtcError(
            "jrtc build needs Polygraphy next to TensorRT: pip install 'jrtc[tensorrt]'"
        ) from None
    from polygraphy.backend.trt import (
        CreateConfig,
        Profile,
        engine_bytes_from_network,
        network_from_onnx_path,
    )

    from jrtc.plugins import tensorrt as trt_plugins
    from jrtc.plugins.aot import Plugin

    name, capability = gpu()
    if tuple(capability) != NEED_CAPABILITY:
        raise JrtcError(
            f"the plugins are compiled for compute capability 9.0 (H100/H200); {name} has "
            f"{capability[0]}.{capability[1]}: export with --target cuda for this GPU"
        )
    for record in manifest["plugins"]:
        trt_plugins.register(Plugin.from_json(record), directory)
    progress(f"parsing {manifest['graph']} (TensorRT {trt.__version__}, {len(manifest['plugins'])} plugins)")
    try:
        network = network_from_onnx_path(str(directory / manifest["graph"]), strongly_typed=True)
    except Exception as exc:  # Polygraphy raises PolygraphyException with the parser's errors
        raise JrtcError(f"TensorRT cannot parse {manifest['graph']}: {first_line(exc)}") from None
    profiles = []
    for profile in manifest["profiles"]:
        p = Profile()
        for tensor, (low, opt, high) in shapes(manifest, profile).items():
            p.add(tensor, min=low, opt=opt, max=high)
        profiles.append(p)
    aliased = hasattr(trt.PreviewFeature, "ALIASED_PLUGIN_IO_10_03")
    cache = timing_cache or default_timing_cache()
    cache.parent.mkdir(parents=True, exist_ok=True)
    config = CreateConfig(
        profiles=profiles,
        preview_features=[trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03] if aliased else None,
        builder_optimization_level=opt_level,
        load_timing_cache=str(cache) if cache.is_file() else None,
    )
    progress(f"building {PLAN} (optimization level {opt_level}; timing cache {cache})")
    try:
        plan = engine_bytes_from_network(network, config=config, save_timing_cache=str(cache))
    except Exception as exc:
        raise JrtcError(f"TensorRT could not build the engine: {first_line(exc)}") from None
    write_atomically(directory / PLAN, bytes(plan))
    return {
        "built": True,
        "tensorrt": trt.__version__,
        "gpu": name,
        "compute_capability": capability,
        "aliased_plugin_io": aliased,
        "opt_level": opt_level,
        "built_with": {"tensorrt": trt.__version__, "polygraphy": polygraphy.__version__},
    }


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file beside it, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finish_directory(
    directory: Path,
    progress: Callable[[str], None] = lambda message: None,
    opt_level: int = DEFAULT_OPT_LEVEL,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """``jrtc build DIR``: build the engine of a ``--no-build`` directory and record it in its manifest."""
    from jrtc.runtime.engine import MANIFEST, Manifest, file_checksum

    if not (directory / MANIFEST).is_file():
        raise JrtcError(f"{directory} is not a jrtc engine directory: it has no {MANIFEST}")
    manifest = Manifest.read(directory / MANIFEST)
    raw = dict(manifest.raw)
    if manifest.backend != "tensorrt" or "plugins" not in raw:
        raise JrtcError(
            f"{directory} is a --target {manifest.target} engine directory; jrtc build finishes those of "
            "jrtc export --target h100|h200 --no-build"
        )
    for name, expected in manifest.checksums.items():
        if not (directory / name).is_file() or file_checksum(directory / name) != expected:
            raise JrtcError(f"{directory / name} is missing or corrupted: export the checkpoint again")
    fields = build_engine(directory, raw, progress, opt_level, timing_cache)
    built_with = {**raw.get("built_with", {}), **fields.pop("built_with")}
    raw.update(fields, engine=PLAN, format="plan", built_with=built_with)
    raw["checksums"] = {**raw["checksums"], PLAN: file_checksum(directory / PLAN)}
    write_atomically(directory / MANIFEST, (json.dumps(raw, indent=1) + "\n").encode())
    return raw
