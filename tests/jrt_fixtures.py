"""Random checkpoints in the original Hugging Face layout, built from the documented key list
(reference/jrt-model.md §3.3), not from jrtc's own module tree, so loading them tests the key names too.

The config is written as the authors' training configs give it (train/configs/experiment/baselines/
jrt-360m-30b.yaml in HazyResearch/prefix-linear-attention): the block of settings that their code would
otherwise default differently (GPT2Config and the mixers' defaults) is there in full."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from jrtc.errors import JrtcError

TARGETS = {
    "conv": "based.models.mixers.convolution.BaseConv",
    "pla": "based.models.mixers.prefix_linear_attention.PrefixLinearAttention",
    "la": "based.models.mixers.linear_attention.LinearAttention",
    "swa": "based.models.mixers.slide_attention.SlidingAttention",
}


# The "other" settings of the authors' JRT and Based configs, verbatim.
AUTHORS_SETTINGS = {
    "special_initializer": True,
    "rms_norm": True,
    "fused_mlp": False,
    "attn_pdrop": 0,
    "embd_pdrop": 0,
    "n_positions": 2048,
    "resid_pdrop": 0,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "fused_bias_fc": True,
    "out_proj_bias": False,
    "qkv_proj_bias": False,
    "use_flash_attn": True,
    "residual_in_fp32": True,
    "activation_function": "swiglu",
    "rotary_emb_fraction": 1,
    "fused_dropout_add_ln": True,
    "max_position_embeddings": 0,
    "pad_vocab_size_multiple": 8,
    "reorder_and_upcast_attn": False,
    "scale_attn_by_inverse_layer_idx": False,
}


def hf_config(
    layer_types: list[str],
    d_model: int = 32,
    heads: int = 2,
    n_inner: int = 256,
    vocab_size: int = 256,
    enc_length: int = 16,
    window_size: int = 8,
) -> dict[str, Any]:
    alt = next((t for t in layer_types if t in ("pla", "la")), "pla")
    return {
        **AUTHORS_SETTINGS,
        "n_embd": d_model,
        "n_layer": len(layer_types),
        "n_head": heads,
        "n_inner": n_inner,
        "vocab_size": vocab_size,
        "layer_norm_epsilon": 1e-5,
        "alt_mixer_layers": [i for i, t in enumerate(layer_types) if t in ("pla", "la")],
        "alt_mixer_2_layers": [i for i, t in enumerate(layer_types) if t == "swa"],
        "mixer": {
            "_target_": TARGETS["conv"],
            "l_max": 2048,
            "use_bias": True,
            "expand_proj": 4,
            "kernel_sizes": [3],
        },
        "alt_mixer": {
            "_target_": TARGETS[alt],
            "feature_dim": 16,
            "feature_name": "taylor_exp",
            "num_heads": heads,
            "num_key_value_heads": heads,
            "enc_length": enc_length,
            "dec_length": enc_length,
            "use_mask": True,
        },
        "alt_mixer_2": {
            "_target_": TARGETS["swa"],
            "window_size": window_size,
            "num_heads": heads,
            "causal": True,
        },
        "enc_length": enc_length,
    }


def random_state_dict(hf: dict[str, Any], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights scaled so activations stay O(1): random but numerically meaningful."""
    g = torch.Generator().manual_seed(seed)
    d, n_inner = hf["n_embd"], hf["n_inner"]
    vocab = (hf["vocab_size"] + 7) // 8 * 8
    qk = hf["alt_mixer"]["num_heads"] * 16

    def lin(out_f: int, in_f: int) -> torch.Tensor:
        return torch.randn(out_f, in_f, generator=g) / in_f**0.5

    def norm() -> torch.Tensor:
        return 1 + 0.1 * torch.randn(d, generator=g)

    sd = {
        "transformer.embeddings.word_embeddings.weight": torch.randn(vocab, d, generator=g),
        "transformer.ln_f.weight": norm(),
    }
    for i in range(hf["n_layer"]):
        p = f"transformer.layers.{i}."
        sd[p + "norm1.weight"], sd[p + "norm2.weight"] = norm(), norm()
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc2.weight"] = lin(2 * n_inner, d), lin(d, n_inner)
        if i in hf["alt_mixer_layers"]:
            names = {"proj_q": qk, "proj_k": qk, "proj_v": d, "out_proj": d}
            if hf["alt_mixer"]["_target_"].endswith("PrefixLinearAttention"):
                names |= {"proj_k_enc": qk, "proj_v_enc": d}
            for name, out_f in names.items():
                sd[p + f"mixer.{name}.weight"] = lin(out_f, d)
        elif i in hf["alt_mixer_2_layers"]:
            sd[p + "mixer.Wqkv.weight"], sd[p + "mixer.out_proj.weight"] = lin(3 * d, d), lin(d, d)
        else:
            sd[p + "mixer.in_proj.weight"], sd[p + "mixer.in_proj.bias"] = (
                lin(4 * d, d),
                0.1 * torch.randn(4 * d, generator=g),
            )
            sd[p + "mixer.conv.conv.weight"] = torch.randn(2 * d, 1, 3, generator=g) / 3**0.5
            sd[p + "mixer.out_proj.weight"], sd[p + "mixer.out_proj.bias"] = (
                lin(d, 2 * d),
                0.1 * torch.randn(d, generator=g),
            )
    return sd


def as_saved(
    sd: dict[str, torch.Tensor], prefix: bool = True, metrics: bool = True, legacy: bool = True
) -> dict[str, torch.Tensor]:
    """What the training pipeline wrote: ``model.`` prefix, metric counters, legacy ``conv1`` names, tied head."""
    out = {}
    for k, v in sd.items():
        if legacy:
            k = k.replace("mixer.conv.conv", "mixer.conv1.conv")
        out[("model." if prefix else "") + k] = v
    out[("model." if prefix else "") + "lm_head.weight"] = sd["transformer.embeddings.word_embeddings.weight"]
    if metrics:
        out["train_metrics.num-tokens.count"] = torch.tensor(12345)
    return out


def write_hf_checkpoint(
    directory: Path, hf: dict[str, Any], sd: dict[str, torch.Tensor], fmt: str = "bin", **saved: bool
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf))
    weights = as_saved(sd, **saved)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        # safetensors refuses shared storage: store the tied head as its own copy, as HF does.
        save_file({k: v.clone().contiguous() for k, v in weights.items()}, directory / "model.safetensors")
    else:
        torch.save(weights, directory / "pytorch_model.bin")
    return directory


def one_line_error(call: Callable[[], object], *fragments: str) -> str:
    """The message of the ``JrtcError`` that ``call`` raises: one line, holding every fragment."""
    with pytest.raises(JrtcError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def export_with_cli(checkpoint: Path, out: Path, options: list[str]) -> None:
    """``jrtc export CHECKPOINT -o OUT --tokenizer bytes OPTIONS``, as a user would run it; must succeed."""
    from click.testing import CliRunner

    from jrtc.cli import main

    args = ["export", str(checkpoint), "-o", str(out), "--tokenizer", "bytes", "--quiet", *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
