"""Model configuration: one dataclass, read from the original HF ``config.json`` or a jrtc checkpoint."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from jrtc.errors import JrtcError, check_int, check_number

LAYER_TYPES = ("conv", "pla", "la", "swa")

# The last component of a mixer's hydra ``_target_`` -> our layer type. The legacy names are the ones
# ``GPTLMHeadModel.__init__`` rewrites (HazyResearch/prefix-linear-attention, train/src/models/gpt.py).
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
        for name in (
            "vocab_size",
            "d_model",
            "n_layer",
            "n_head",
            "n_inner",
            "pla_heads",
            "pad_vocab_multiple",
        ):
            check_int(name, getattr(self, name), minimum=1)
        check_int("enc_length", self.enc_length, minimum=0)
        check_int("window_size", self.window_size, minimum=2)  # below 2 the ring of window_size // 2 is empty
        check_number("rotary_base", self.rotary_base, 0.0, open_minimum=True)
        check_number("rotary_fraction", self.rotary_fraction, 0.0)
        check_number("norm_eps", self.norm_eps, 0.0, open_minimum=True)
        check_int("pad_token_id", self.pad_token_id, minimum=0, maximum=self.vocab_size - 1)
        if self.eos_token_id is not None:
            check_int("eos_token_id", self.eos_token_id, minimum=0, maximum=self.vocab_size - 1)
        if not isinstance(self.layer_types, tuple) or len(self.layer_types) != self.n_layer:
            count = len(self.layer_types) if isinstance(self.layer_types, (tuple, list)) else "no"
            raise JrtcError(f"config lists {count} layer types for n_layer={self.n_layer}")
        unknown = sorted(set(map(str, self.layer_types)) - set(LAYER_TYPES))
        if unknown:
            raise JrtcError(f"unknown layer type {unknown[0]!r}; jrtc knows {', '.join(LAYER_TYPES)}")
        if "swa" in self.layer_types and self.d_model % self.n_head:
            raise JrtcError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if {"pla", "la"} & set(self.layer_types) and self.d_model % self.pla_heads:
            raise JrtcError(f"d_model={self.d_model} is not divisible by pla_heads={self.pla_heads}")
        if "swa" in self.layer_types and (self.rotary_fraction > 1 or self.rotary_dim % 2):
            raise JrtcError(
                f"rotary_fraction={self.rotary_fraction} gives {self.rotary_dim} rotary channels of "
                f"{self.head_dim}: it must give an even number, at most the head dim"
            )
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

    @property
    def rotary_dim(self) -> int:
        return int(self.rotary_fraction * self.head_dim)  # as sliding_window_additions computes it

    @property
    def num_parameters(self) -> int:
        """Parameters of the model this config describes (the tied head counted once), without building it."""
        return parameter_count(
            self.vocab_size_padded, self.d_model, self.n_inner, self.pla_heads, Counter(self.layer_types)
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> JRTConfig:
        if not isinstance(d, dict):
            raise JrtcError(f"the jrtc config must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise JrtcError(f"unknown config field {unknown[0]!r} in jrtc checkpoint")
        missing = [
            f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
        ]
        if missing:
            raise JrtcError(f"incomplete jrtc config: no {missing[0]!r}")
        if not isinstance(d["layer_types"], list | tuple):
            raise JrtcError(f"layer_types must be a list of layer types, got {d['layer_types']!r}")
        return cls(**{**d, "layer_types": tuple(d["layer_types"])})

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], max_parameters: int | None = None) -> JRTConfig:
        """Read the original checkpoints' ``config.json`` as the authors' code does.

        Their loader builds ``GPT2Config(**config)`` and ``GPTLMHeadModel`` from it (``gpt.py``,
        ``from_pretrained_hf``): a field left out takes GPT2Config's default or the default of the module
        that reads it, and jrtc takes the same. Settings jrtc does not implement are refused by name.
        ``max_parameters`` refuses sizes that the weights could not hold before anything is allocated.
        """
        read = _Fields(hf)
        d_model = read.int("n_embd", 768)
        n_layer = read.int("n_layer", 12)
        vocab_size = read.int("vocab_size", GPT2_VOCAB_SIZE)
        n_head = read.int("n_head", 12)  # sliding_window_additions: num_heads = config.num_attention_heads
        mixer = read.mixer("mixer")
        if mixer is None:
            raise JrtcError("config.json has no mixer: not a JRT-RNN / Based config")
        mixers = {"mixer": mixer}  # slot -> (layer type, its settings), for the slots in use
        alt_layers = read.layer_list("alt_mixer_layers", n_layer)
        alt2_layers = read.layer_list("alt_mixer_2_layers", n_layer)
        alt_layers -= alt2_layers  # create_mixer_cls looks at alt_mixer_2_layers first
        for field, indices in (("alt_mixer", alt_layers), ("alt_mixer_2", alt2_layers)):
            spec = read.mixer(field) if indices else None
            if indices and spec is None:
                raise JrtcError(
                    f"config.json lists {field}_layers but has no {field}: the authors' code makes those "
                    "layers full softmax attention (MHA), which jrtc does not implement"
                )
            if spec is not None:
                mixers[field] = spec
        alt_type = mixers["alt_mixer"][0] if alt_layers else None
        present = {t for t, _ in mixers.values()}
        if n_layer == len(alt_layers) + len(alt2_layers):
            present.discard("conv")
        read.check_settings(present)

        # GatedMlp (mlp.py): hidden_features defaults to int(8 * d / 3), rounded up to a multiple of 256.
        n_inner = int(8 * d_model / 3) if hf.get("n_inner") is None else read.int("n_inner")
        n_inner = (n_inner + 255) // 256 * 256
        alt = mixers["alt_mixer"][1] if alt_layers else {}
        # PrefixLinearAttention has no default head count (num_heads=None); LinearAttention's is 16.
        pla_heads = read.int("alt_mixer.num_heads", None if alt_type == "pla" else 16)
        pad_multiple = read.int("pad_vocab_size_multiple", 1)
        if max_parameters is not None:
            counts = Counter({"conv": n_layer - len(alt_layers) - len(alt2_layers), "swa": len(alt2_layers)})
            counts[alt_type or "pla"] += len(alt_layers)
            padded = (vocab_size + pad_multiple - 1) // pad_multiple * pad_multiple
            size = parameter_count(padded, d_model, n_inner, pla_heads, counts)
            if size > max_parameters:
                raise JrtcError(
                    f"config.json describes a model of {size:.3g} parameters, but its weights file has only "
                    f"{max_parameters} bytes: the file is truncated, or n_embd, n_layer, n_inner or vocab_size is wrong"
                )
        types = ["conv"] * n_layer
        for i in alt_layers:
            types[i] = alt_type
        for i in alt2_layers:
            types[i] = "swa"

        enc_length = 0
        if alt_type == "pla":  # PrefixLinearAttention(enc_length=None) fails: the field has no default
            enc_length = read.int("alt_mixer.enc_length", None)
        window_size = 256
        if alt2_layers:
            # SlidingAttention(window_size=128); null would assert there, and 0 or 1 leave no window.
            window_size = read.int("alt_mixer_2.window_size", 128, minimum=2)
            if window_size == 4096 and alt2_layers & {7, 17}:
                raise JrtcError(
                    "config.json alt_mixer_2.window_size is 4096, which the authors' SlidingAttention "
                    "replaces by 256 at layers 7 and 17 only; jrtc has one window for all layers"
                )
            head_dim = d_model // n_head if d_model % n_head == 0 else None
            read.same("head_dim", head_dim, "the sliding-window head dim, n_embd // n_head")
            for field in ("num_head_kv", "n_head_kv"):
                read.same(field, n_head, "as many key/value heads as query heads (n_head)")
        if alt_type:
            read.same("alt_mixer.head_dim", d_model // pla_heads, "value heads of n_embd // num_heads")
            read.same("alt_mixer.feature_dim", 16, "the Taylor feature map of feature_dim 16")
            read.check_feature_map(alt)
        gpt2 = vocab_size == GPT2_VOCAB_SIZE
        return cls(
            vocab_size=vocab_size,
            d_model=d_model,
            n_layer=n_layer,
            n_head=n_head,
            n_inner=n_inner,
            layer_types=tuple(types),
            pla_heads=pla_heads,
            enc_length=enc_length,
            window_size=window_size,
            rotary_base=read.number("rotary_emb_base", 10000.0, 0.0, open_minimum=True),
            # sliding_window_additions: rotary_emb_dim = int(getattr(config, "rotary_emb_fraction", 0.0) * head_dim)
            rotary_fraction=read.number("rotary_emb_fraction", 0.0, 0.0),
            norm_eps=read.number("layer_norm_epsilon", 1e-5, 0.0, open_minimum=True),
            pad_vocab_multiple=pad_multiple,
            # The tokenizer's ids, not the model's math: a null pad means the byte-level space.
            pad_token_id=GPT2_SPACE_ID if gpt2 else read.optional_int("pad_token_id", BYTE_SPACE_ID),
            eos_token_id=GPT2_EOS_ID if gpt2 else read.optional_int("eos_token_id", None),
        )


def parameter_count(
    vocab_size_padded: int, d_model: int, n_inner: int, pla_heads: int, layers: Counter[str]
) -> int:
    """Parameters of a model with ``layers`` (layer type -> count); the tied head counted once."""
    d, qk = d_model, 16 * pla_heads
    per_type = {
        # in_proj d -> 4d with bias, depthwise kernel 2d x 3, out_proj 2d -> d with bias
        "conv": 6 * d * d + 11 * d,
        "pla": 3 * qk * d + 3 * d * d,  # q, k, k_enc; v, v_enc, out
        "la": 2 * qk * d + 2 * d * d,
        "swa": 4 * d * d,  # Wqkv, out_proj
    }
    per_layer = 2 * d + 3 * d * n_inner  # two norms and the gated MLP
    return vocab_size_padded * d + d + sum(n * (per_layer + per_type[t]) for t, n in layers.items())


# Settings of the authors' modules that change the math or the weights, and the values jrtc implements. A
# field that config.json leaves out takes the authors' default, so leaving out activation_function means
# gelu_new there and is refused here. A setting only counts when the model has the layer types listed.
# Sources (https://github.com/HazyResearch/prefix-linear-attention/tree/7490f22bda3e, the authors' code
# release): train/src/models/gpt.py (create_mlp_cls,
# create_block, sliding_window_additions, GPTModel, GPTLMHeadModel), train/src/models/mlp.py (GatedMlp),
# based/models/mixers/{convolution,prefix_linear_attention,linear_attention,slide_attention}.py.
_SETTINGS: tuple[tuple[str, Any, tuple[Any, ...], tuple[str, ...] | None, str], ...] = (
    # field ("mixer.x" reads a mixer's dict), authors' default, values jrtc implements, layer types, meaning
    ("activation_function", "gelu_new", ("swiglu",), None, "the SwiGLU MLP"),
    ("mlp_type", "base", ("base",), None, "the SwiGLU MLP"),
    ("fused_mlp", False, (False,), None, "the SwiGLU MLP"),
    ("fused_dense_sqrelu_dense", False, (False,), None, "the SwiGLU MLP"),
    ("mlp_fc1_bias", True, (False,), None, "MLPs without biases"),
    ("mlp_fc2_bias", True, (False,), None, "MLPs without biases"),
    ("rms_norm", False, (True,), None, "RMSNorm"),
    ("prenorm", True, (True,), None, "pre-norm blocks"),
    ("parallel_block", False, (False,), None, "sequential blocks"),
    ("tie_word_embeddings", True, (True,), None, "an output head tied to the embedding"),
    ("lm_head_bias", False, (False,), None, "an output head without bias"),
    ("word_embed_proj_dim", None, (None,), None, "embeddings of width n_embd"),
    ("qkv_proj_bias", True, (False,), ("swa",), "sliding-window attention without biases"),
    ("out_proj_bias", True, (False,), ("swa",), "sliding-window attention without biases"),
    ("scale_attn_weights", True, (True,), ("swa",), "softmax scaled by head_dim ** -0.5"),
    ("scale_attn_by_inverse_layer_idx", False, (False,), ("swa",), "softmax scaled by head_dim ** -0.5"),
    ("rotary_emb_scale_base", None, (None,), ("swa",), "rotary embeddings without xPos"),
    ("rotary_emb_interleaved", False, (False,), ("swa",), "GPT-NeoX (rotate-half) rotary embeddings"),
    ("mixer.expand_proj", 2, (4,), ("conv",), "BaseConv with an inner width of 2 * n_embd"),
    ("mixer.kernel_size", 3, (3,), ("conv",), "BaseConv with a width-3 convolution"),
    ("mixer.use_bias", True, (True,), ("conv",), "BaseConv projections with biases"),
    ("alt_mixer.implementation", "default", ("default", "fla_parallel"), ("pla",), "prefix linear attention"),
    ("alt_mixer.use_mask", True, (True,), ("pla",), "prefix linear attention that masks left pads"),
    ("alt_mixer.scale_dim", None, (None, 16), ("pla",), "the Taylor feature map of feature_dim 16"),
    ("alt_mixer.eps", 1e-12, (1e-12,), ("pla", "la"), "a normalizer eps of 1e-12"),
    (
        "alt_mixer.parallel_implementation",
        "quadratic",
        ("quadratic", "linear", "fla_parallel", "fla_chunk"),
        ("la",),
        "Based's linear attention without output norm",
    ),
    # Based's decay (gpt.py DecayClass, used by LinearAttention in HazyResearch/based's training configs).
    ("alt_mixer.use_decay_proj", False, (False,), ("la",), "linear attention without Based's decay"),
    ("fixed_decay", False, (False,), ("la",), "linear attention without Based's decay (decay_const)"),
)


class _Fields:
    """Typed reads of ``config.json``; ``"a.b"`` reads field b of the mixer dict a. Errors name the field."""

    def __init__(self, hf: dict[str, Any]) -> None:
        self.hf = hf

    def _where(self, path: str) -> tuple[dict[str, Any], str]:
        if "." not in path:
            return self.hf, path
        mixer, field = path.split(".", 1)
        return self.hf.get(mixer) if isinstance(self.hf.get(mixer), dict) else {}, field

    def present(self, path: str) -> bool:
        where, field = self._where(path)
        return field in where

    def get(self, path: str, default: Any) -> Any:
        where, field = self._where(path)
        return where.get(field, default)

    def int(self, path: str, default: int | None = None, minimum: int = 1) -> int:
        if not self.present(path) and default is None:
            raise JrtcError(f"config.json has no {path}, and the authors' code has no default for it")
        return check_int(f"config.json {path}", self.get(path, default), minimum=minimum)

    def optional_int(self, path: str, default: int | None) -> int | None:
        value = self.get(path, None)
        return default if value is None else check_int(f"config.json {path}", value, minimum=0)

    def number(self, path: str, default: float, minimum: float, open_minimum: bool = False) -> float:
        return check_number(f"config.json {path}", self.get(path, default), minimum, open_minimum)

    def same(self, path: str, expected: Any, meaning: str) -> None:
        value = self.get(path, None)
        if value is not None and value != expected:
            raise JrtcError(
                f"config.json sets {path}={json.dumps(value)}: jrtc implements only {meaning} ({expected})"
            )

    def mixer(self, field: str) -> tuple[str, dict[str, Any]] | None:
        """The layer type and settings of a mixer dict (its hydra ``_target_`` names the class)."""
        spec = self.hf.get(field)
        if spec is None:
            return None
        if not isinstance(spec, dict) or "_target_" not in spec:
            raise JrtcError(f"config.json {field} must be an object with a _target_ class, got {spec!r}")
        name = str(spec["_target_"]).rsplit(".", 1)[-1]
        if name not in _MIXER_CLASSES:
            raise JrtcError(
                f"unknown layer type {spec['_target_']!r} in config.json {field}; jrtc supports {sorted(_MIXER_CLASSES)}"
            )
        layer_type = _MIXER_CLASSES[name]
        if layer_type not in _SLOTS[field]:
            raise JrtcError(
                f"config.json {field} is {name}; jrtc reads {' or '.join(_NAMES[t] for t in _SLOTS[field])} there"
            )
        return layer_type, spec

    def layer_list(self, field: str, n_layer: int) -> set[int]:
        indices = self.hf.get(field)
        if indices is None:
            return set()
        if not isinstance(indices, list):
            raise JrtcError(f"config.json {field} must be a list of layer indices, got {indices!r}")
        name = f"config.json {field} entries (layer indices)"
        return {check_int(name, i, minimum=0, maximum=n_layer - 1) for i in indices}

    def check_settings(self, layer_types: set[str]) -> None:
        for path, default, allowed, only_for, meaning in _SETTINGS:
            if only_for is not None and not layer_types & set(only_for):
                continue
            value = self.get(path, default)
            if value not in allowed:
                given = (
                    f"sets {path}={json.dumps(value)}"
                    if self.present(path)
                    else f"leaves out {path}, which the authors' code then takes as {json.dumps(default)}"
                )
                raise JrtcError(
                    f"config.json {given}: jrtc implements only {meaning} ({path}={json.dumps(allowed[0])})"
                )
        positions = self.hf.get("max_position_embeddings", self.hf.get("n_positions", 1024))
        if not isinstance(positions, int) or positions > 0:
            raise JrtcError(
                f"config.json gives position embeddings (max_position_embeddings / n_positions = {positions}; "
                "GPT2Config's default is 1024): JRT-RNN has none, set max_position_embeddings to 0"
            )

    def check_feature_map(self, alt: dict[str, Any]) -> None:
        feature_map = alt.get("feature_map")
        if feature_map is None:
            return
        target = str(feature_map.get("_target_", "")) if isinstance(feature_map, dict) else ""
        if not target.endswith("TaylorExp") or feature_map.get("input_dim", 16) != 16:
            raise JrtcError(
                f"config.json alt_mixer.feature_map is {feature_map!r}: jrtc implements only TaylorExp of input_dim 16"
            )


# Which layer types each mixer slot may hold (create_mixer_cls: mixer, alt_mixer, alt_mixer_2).
_SLOTS = {"mixer": ("conv",), "alt_mixer": ("pla", "la"), "alt_mixer_2": ("swa",)}
_NAMES = {
    "conv": "BaseConv",
    "pla": "PrefixLinearAttention",
    "la": "LinearAttention",
    "swa": "SlidingAttention",
}
