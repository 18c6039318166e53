"""Model configuration: one dataclass, read from the original HF ``config.json`` or a jrtc checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jrtc.errors import JrtcError

LAYER_TYPES = ("conv", "pla", "la", "swa")

# The last component of a mixer's hydra ``_target_`` -> our layer type. The legacy names are the ones
# the original ``GPTLMHeadModel.__init__`` rewrites (reference/jrt-model.md §3.2).
_MIXER_CLASSES = {
    "BaseConv": "conv",
    "BaseConvWithSiLU4": "conv",
    "PrefixLinearAttention": "pla",
    "LinearAttention": "la",
    "SlidingAttention": "swa",
    "SlidingsMHA": "swa",
}

GPT2_VOCAB_SIZE = 50257
GPT2_SPACE_ID = 220
GPT2_EOS_ID = 50256
BYTE_SPACE_ID = 32


@dataclass(frozen=True)
class JRTConfig:
    """Shapes and hyper-parameters of a JRT-RNN (or Based) model; names follow the paper, not GPT2Config."""

    vocab_size: int
    d_model: int
    n_layer: int
    n_head: int  # sliding-window attention heads
    n_inner: int  # MLP hidden width (fc1 is twice as wide: value and gate)
    layer_types: tuple[str, ...]
    pla_heads: int = 16
    feature_dim: int = 16
    enc_length: int = 1024  # 0 for Based: no encoder
    window_size: int = 256  # a query sees itself and window_size // 2 previous tokens
    rotary_base: float = 10000.0
    rotary_fraction: float = 1.0
    norm_eps: float = 1e-5
    pad_vocab_multiple: int = 8
    pad_token_id: int = GPT2_SPACE_ID
    eos_token_id: int | None = GPT2_EOS_ID

    def __post_init__(self) -> None:
        if len(self.layer_types) != self.n_layer:
            raise JrtcError(f"config lists {len(self.layer_types)} layer types for n_layer={self.n_layer}")
        unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if unknown:
            raise JrtcError(f"unknown layer type {unknown[0]!r}; jrtc knows {', '.join(LAYER_TYPES)}")
        if self.d_model % self.n_head or self.d_model % self.pla_heads:
            raise JrtcError(f"d_model={self.d_model} is not divisible by the head counts")
        if self.feature_dim != 16:
            raise JrtcError(f"feature_dim={self.feature_dim} is not supported; JRT-RNN uses 16")
        if "pla" in self.layer_types and self.enc_length <= 0:
            raise JrtcError("prefix linear attention needs enc_length > 0")

    @property
    def vocab_size_padded(self) -> int:
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def pla_head_dim(self) -> int:
        return self.d_model // self.pla_heads

    @property
    def swa_ring(self) -> int:
        return self.window_size // 2

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JRTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise JrtcError(f"unknown config field {unknown[0]!r} in jrtc checkpoint")
        try:
            return cls(**{**d, "layer_types": tuple(d["layer_types"])})
        except (KeyError, TypeError) as e:
            raise JrtcError(f"incomplete jrtc config: {e}") from None

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> JRTConfig:
        """Read the original checkpoints' ``config.json`` (GPT2Config fields plus the mixer dicts)."""
        try:
            n_layer, d_model = int(hf["n_layer"]), int(hf["n_embd"])
            vocab_size = int(hf["vocab_size"])
        except KeyError as e:
            raise JrtcError(f"config.json lacks {e.args[0]!r}: not a JRT-RNN / Based config") from None
        mixer = hf.get("mixer") or {}
        alt = hf.get("alt_mixer") or {}
        alt2 = hf.get("alt_mixer_2") or {}
        types = [_mixer_type(mixer, "mixer", default="conv")] * n_layer
        for i in hf.get("alt_mixer_layers") or []:
            types[i] = _mixer_type(alt, "alt_mixer", default="pla")
        for i in hf.get("alt_mixer_2_layers") or []:
            types[i] = _mixer_type(alt2, "alt_mixer_2", default="swa")
        n_inner = hf.get("n_inner") or 4 * d_model
        n_inner = (int(n_inner) + 255) // 256 * 256  # GatedMlp rounds its width up to a multiple of 256
        enc_length = int(alt.get("enc_length", hf.get("enc_length", 1024))) if "pla" in types else 0
        gpt2 = vocab_size == GPT2_VOCAB_SIZE
        return cls(
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            n_head=int(alt2.get("num_heads", hf.get("n_head", 16))),
            n_inner=n_inner,
            layer_types=tuple(types),
            pla_heads=int(alt.get("num_heads", 16)),
            feature_dim=int(alt.get("feature_dim", 16)),
            enc_length=enc_length,
            window_size=int(alt2.get("window_size", 256)),
            rotary_base=float(hf.get("rotary_emb_base", 10000.0)),
            rotary_fraction=float(hf.get("rotary_emb_fraction", 1.0)),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            pad_vocab_multiple=int(hf.get("pad_vocab_size_multiple", 1)),
            pad_token_id=GPT2_SPACE_ID if gpt2 else int(hf.get("pad_token_id") or BYTE_SPACE_ID),
            eos_token_id=GPT2_EOS_ID if gpt2 else hf.get("eos_token_id"),
        )


def _mixer_type(mixer: dict[str, Any], field: str, default: str) -> str:
    target = mixer.get("_target_")
    if target is None:
        return default
    name = str(target).rsplit(".", 1)[-1]
    if name not in _MIXER_CLASSES:
        raise JrtcError(
            f"unknown layer type {target!r} in config.json {field}; jrtc supports {sorted(_MIXER_CLASSES)}"
        )
    return _MIXER_CLASSES[name]
