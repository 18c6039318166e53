"""What ``jrtc info`` reports about a model."""

from __future__ import annotations

from typing import Any

from jrtc.model import JRTModel

_SHORT = {"conv": "C", "pla": "P", "la": "L", "swa": "S"}


def describe(model: JRTModel) -> dict[str, Any]:
    cfg = model.config
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(cfg.layer_types):
        by_type.setdefault(t, []).append(i)
    state_bytes = model.state_bytes()
    pla_bytes = sum(n for name, n in state_bytes.items() if name.endswith((".kv", ".z")))
    return {
        "architecture": "JRT-RNN" if "pla" in by_type else "Based",
        "layers": cfg.n_layer,
        "layer mix": "".join(_SHORT[t] for t in cfg.layer_types) + "  (C=BaseConv P=PLA L=linear attn S=SWA)",
        "BaseConv layers": by_type.get("conv", []),
        "PLA layers": by_type.get("pla", []),
        "linear attention layers": by_type.get("la", []),
        "sliding-window layers": by_type.get("swa", []),
        "d_model": cfg.d_model,
        "MLP width": cfg.n_inner,
        "SWA heads x head dim": f"{cfg.n_head} x {cfg.head_dim}",
        "PLA heads x value dim": f"{cfg.pla_heads} x {cfg.pla_head_dim}",
        "feature dim": f"{cfg.feature_dim} (Taylor map, 153 stored features)",
        "enc_length": cfg.enc_length,
        "window": f"{cfg.window_size} (each token sees {cfg.swa_ring} previous)",
        "vocab": f"{cfg.vocab_size} (padded to {cfg.vocab_size_padded})",
        "parameters": model.num_parameters(),
        "dtype": str(model.lm_head.weight.dtype).removeprefix("torch."),
        "PLA state bytes/seq (fp32)": pla_bytes,
        "state bytes/seq (total)": sum(state_bytes.values()),
    }
