"""Checkpoint I/O: the original HF layout (config.json + pytorch_model.bin | model.safetensors) and jrtc .pt files.

Pickled files are read with ``weights_only=True`` so that a checkpoint cannot run code. Every problem becomes a
one-line ``JrtcError`` that names the file, the key and the shapes involved.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from jrtc.config import JRTConfig
from jrtc.errors import JrtcError
from jrtc.model import JRTModel

JRTC_FORMAT = "jrtc-checkpoint"
JRTC_FORMAT_VERSION = 1
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TIED_HEAD = "lm_head.weight"

# Which keys betray a layer's type; cross-checked against config.json (reference/jrt-model.md §3.3).
_TYPE_KEYS = {"pla": "mixer.proj_k_enc.weight", "swa": "mixer.Wqkv.weight", "conv": "mixer.in_proj.weight"}


def load_checkpoint(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    use_kernels: bool = False,
) -> JRTModel:
    """Load a JRT-RNN or Based checkpoint into an eval-mode ``JRTModel``."""
    path = Path(path)
    if not path.exists():
        raise JrtcError(f"checkpoint not found: {path}")
    if path.is_dir():
        config, state_dict = _read_hf_dir(path)
    else:
        config, state_dict = _read_jrtc_file(path)
    state_dict = normalize_keys(state_dict)
    _check_layer_types(path, config, state_dict)
    with torch.device("meta"):
        model = JRTModel(config)
    _check_keys(path, model, state_dict)
    _check_values(path, state_dict)
    embedding = state_dict["transformer.embeddings.word_embeddings.weight"]
    # The authors' model ties the head to the embedding; a head that differs would be dropped silently.
    if not torch.equal(state_dict.setdefault(TIED_HEAD, embedding), embedding):
        raise JrtcError(f"{path}: {TIED_HEAD} differs from the word embeddings, but the model ties them")
    model.load_state_dict(state_dict, assign=True)
    model.lm_head.weight = model.transformer.embeddings.word_embeddings.weight  # assign=True unties them
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if use_kernels:
        model.use_kernels()
    return model


def save_checkpoint(model: JRTModel, path: str | os.PathLike[str]) -> None:
    """Write a jrtc ``.pt`` file (config + state dict, no code objects), atomically."""
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k != TIED_HEAD}
    payload = {
        "format": JRTC_FORMAT,
        "version": JRTC_FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state_dict,
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def normalize_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo what the training pipeline added: the Lightning ``model.`` prefix, metric counters, legacy names."""
    out = {}
    for key, value in state_dict.items():
        if "metrics" in key:
            continue
        key = re.sub(r"^model\.", "", key)
        out[key.replace("conv1", "conv")] = value  # the original loader's rename of the legacy conv names
    if "transformer.ln_0.weight" in out:
        raise JrtcError(
            "this is a legacy post-norm checkpoint (transformer.ln_0.weight), which jrtc does not support"
        )
    return out


def _read_hf_dir(path: Path) -> tuple[JRTConfig, dict[str, torch.Tensor]]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise JrtcError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    try:
        hf_config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JrtcError(f"cannot read {config_file}: {e}") from None
    if not isinstance(hf_config, dict):
        raise JrtcError(f"{config_file} is not a JSON object")
    weights = next((path / n for n in HF_WEIGHT_FILES if (path / n).is_file()), None)
    if weights is None:
        raise JrtcError(f"{path} has no weights: expected {' or '.join(HF_WEIGHT_FILES)}")
    # A parameter takes at least a byte, so the file's size bounds the model before anything is read.
    config = JRTConfig.from_hf_dict(hf_config, max_parameters=weights.stat().st_size)
    return config, _read_weights(weights)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises several types for corrupt files
            raise JrtcError(f"cannot read {path}: not a valid safetensors file ({e})") from None
    state_dict = _torch_load(path)
    if isinstance(state_dict, dict) and "state_dict" in state_dict:  # a Lightning checkpoint
        state_dict = state_dict["state_dict"]
    return _tensor_dict(path, state_dict)


def _tensor_dict(path: Path, state_dict: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise JrtcError(f"{path} does not hold a state dict of named tensors")
    return state_dict


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated or foreign files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if reason.startswith("Weights only load failed"):  # torch's advice to load unsafely is not ours
            reason = "it holds something other than tensors and plain data"
        raise JrtcError(
            f"cannot read {path}: not a PyTorch checkpoint or unsafe to load ({reason[:200]})"
        ) from None


def _read_jrtc_file(path: Path) -> tuple[JRTConfig, dict[str, torch.Tensor]]:
    if path.suffix == ".safetensors" or path.name in HF_WEIGHT_FILES:
        raise JrtcError(f"{path} is a weights file; pass the directory that holds it and config.json")
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != JRTC_FORMAT:
        raise JrtcError(
            f"{path} is not a jrtc checkpoint (no '{JRTC_FORMAT}' header); for HF checkpoints pass the directory"
        )
    version = payload.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise JrtcError(f"{path} has no valid jrtc checkpoint version (got {version!r})")
    if version > JRTC_FORMAT_VERSION:
        raise JrtcError(
            f"{path} is jrtc checkpoint version {version}; this jrtc reads up to {JRTC_FORMAT_VERSION}: upgrade jrtc"
        )
    for field in ("config", "state_dict"):
        if field not in payload:
            raise JrtcError(f"{path} is a jrtc checkpoint without its {field!r}: the file is damaged")
    config = JRTConfig.from_dict(payload["config"])
    if config.num_parameters > path.stat().st_size:  # checked before the model is built from it
        raise JrtcError(
            f"{path}: its config describes {config.num_parameters:.3g} parameters, more than the file holds"
        )
    return config, _tensor_dict(path, payload["state_dict"])


def _check_layer_types(path: Path, config: JRTConfig, state_dict: dict[str, torch.Tensor]) -> None:
    for i, declared in enumerate(config.layer_types):
        prefix = f"transformer.layers.{i}."
        if prefix + "mixer.proj_q.weight" in state_dict:
            found = "pla" if prefix + _TYPE_KEYS["pla"] in state_dict else "la"
        else:
            found = next((t for t, key in _TYPE_KEYS.items() if prefix + key in state_dict), None)
        if found is None:
            continue  # reported as missing keys, with names
        if found != declared:
            raise JrtcError(
                f"{path}: the config makes layer {i} {_NAMES[declared]} but its weights are {_NAMES[found]}"
            )


_NAMES = {
    "conv": "BaseConv",
    "pla": "prefix linear attention",
    "la": "linear attention",
    "swa": "sliding-window attention",
}


def _check_keys(path: Path, model: JRTModel, state_dict: dict[str, torch.Tensor]) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict and k != TIED_HEAD]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_some(unexpected)}")
        raise JrtcError(f"{path} does not match its config: {'; '.join(parts)}")
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            found = tuple(state_dict[key].shape)
            raise JrtcError(f"{path}: {key} has shape {list(found)}, expected {list(shape)} from the config")


def _check_values(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Weights must be finite floats: integer tensors would be cast silently, NaN would generate NUL bytes."""
    for key, value in state_dict.items():
        if not value.is_floating_point():
            raise JrtcError(
                f"{path}: {key} holds {str(value.dtype).removeprefix('torch.')} values; weights must be floating point"
            )
        if not torch.isfinite(value).all():
            raise JrtcError(f"{path}: {key} holds NaN or infinite values")


def _some(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")
