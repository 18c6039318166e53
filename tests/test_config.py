"""config.json read as the authors' code reads it (HazyResearch/prefix-linear-attention @ 7490f22).

Their loader is ``GPT2Config(**config)`` then ``GPTLMHeadModel(config)`` (train/src/models/gpt.py): a field
that config.json leaves out takes GPT2Config's default or the default of the module that reads it
(train/src/models/mlp.py, based/models/mixers/*.py). Each test writes a config that way (the fixtures'
configs carry the authors' own settings block) and checks what jrtc makes of it, down to the weights.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from jrt_fixtures import TARGETS, hf_config, one_line_error, random_state_dict, write_hf_checkpoint

import jrtc
from jrtc.config import JRTConfig
from jrtc.model import JRTModel

MIX = ["conv", "pla", "swa", "conv"]


def without(hf: dict[str, Any], *paths: str) -> dict[str, Any]:
    """A copy of ``hf`` with the fields removed (``"alt_mixer_2.window_size"`` reaches into a mixer)."""
    hf = copy.deepcopy(hf)
    for path in paths:
        where, _, field = path.rpartition(".")
        (hf[where] if where else hf).pop(field)
    return hf


def refused(hf: dict[str, Any], *fragments: str) -> str:
    return one_line_error(lambda: JRTConfig.from_hf_dict(hf), *fragments)


def logits(model: JRTModel) -> torch.Tensor:
    return model(torch.arange(40)[None] % 256)


def test_rotary_fraction_left_out_means_no_rotary(tmp_path: Path) -> None:
    """sliding_window_additions: rotary_emb_dim = int(getattr(config, "rotary_emb_fraction", 0.0) * head_dim)."""
    hf = hf_config(MIX)
    sd = random_state_dict(hf)
    absent = jrtc.load_checkpoint(
        write_hf_checkpoint(tmp_path / "absent", without(hf, "rotary_emb_fraction"), sd)
    )
    assert absent.config.rotary_fraction == 0.0 and absent.transformer.layers[2].mixer.rotary_dim == 0
    zero = jrtc.load_checkpoint(write_hf_checkpoint(tmp_path / "zero", hf | {"rotary_emb_fraction": 0}, sd))
    full = jrtc.load_checkpoint(write_hf_checkpoint(tmp_path / "full", hf, sd))
    assert full.transformer.layers[2].mixer.rotary_dim == 16
    assert torch.equal(logits(absent), logits(zero))
    assert not torch.allclose(logits(absent), logits(full))


def test_window_size_left_out_is_128() -> None:
    """SlidingAttention(window_size=128): a query sees itself and 64 earlier tokens."""
    cfg = JRTConfig.from_hf_dict(without(hf_config(MIX, window_size=8), "alt_mixer_2.window_size"))
    assert (cfg.window_size, cfg.swa_ring) == (128, 64)


def test_sliding_window_heads_are_n_head() -> None:
    """sliding_window_additions overwrites alt_mixer_2.num_heads with config.num_attention_heads (n_head)."""
    hf = hf_config(MIX, heads=2)
    hf["n_head"], hf["alt_mixer_2"]["num_heads"] = 4, 2
    cfg = JRTConfig.from_hf_dict(hf)
    assert (cfg.n_head, cfg.head_dim, cfg.pla_heads) == (4, 8, 2)
    with torch.device("meta"):
        assert JRTModel(cfg).transformer.layers[2].mixer.num_heads == 4


@pytest.mark.parametrize(
    "d_model,n_inner,expected",
    [
        (1024, None, 2816),  # int(8 * 1024 / 3) = 2730, rounded up to a multiple of 256
        (1792, None, 4864),  # 4778 -> 4864
        (32, None, 256),  # 85 -> 256
        (1024, 2048, 2048),  # the released configs: 2 * n_embd, already a multiple
        (1000, 2000, 2048),  # GatedMlp rounds a given width up too
    ],
)
def test_mlp_width_default_and_rounding(d_model: int, n_inner: int | None, expected: int) -> None:
    """GatedMlp: hidden_features or int(8 * in_features / 3), then rounded up to multiple_of=256."""
    hf = hf_config(MIX, d_model=d_model, heads=4)
    hf["n_inner"] = n_inner
    assert JRTConfig.from_hf_dict(hf).n_inner == expected
    if n_inner is None:
        assert JRTConfig.from_hf_dict(without(hf, "n_inner")).n_inner == expected


def test_mlp_width_left_out_loads_the_weights(tmp_path: Path) -> None:
    hf = hf_config(MIX)  # d 32: the default width is 256, which the fixture's weights have
    model = jrtc.load_checkpoint(
        write_hf_checkpoint(tmp_path / "hf", without(hf, "n_inner"), random_state_dict(hf))
    )
    assert model.config.n_inner == 256


def based_360m_config() -> dict[str, Any]:
    """HazyResearch/prefix-linear-attention train/configs/experiment/baselines/based-360m-30b.yaml, shrunk."""
    hf = hf_config(["conv", "la", "swa", "conv"])
    hf["alt_mixer"] = {
        "_target_": "based.models.mixers.linear_attn.LinearAttention",
        "l_max": 2048,
        "feature_dim": 16,
        "feature_name": "taylor_exp",
        "num_heads": 2,
        "num_key_value_heads": 2,
        "use_rotary_apply": False,
        "use_act": False,
        "train_view": "quadratic",
        "use_decay_proj": True,
    }
    return hf | {"fixed_decay": True, "decay_const": -3, "decay_denom": False}


def test_decayed_linear_attention_is_refused() -> None:
    """Based's decay (gpt.py DecayClass, LinearAttention.use_decay_proj) is refused, never dropped."""
    hf = based_360m_config()
    refused(hf, "alt_mixer.use_decay_proj=true", "decay")
    hf["alt_mixer"]["use_decay_proj"] = False
    refused(hf, "fixed_decay=true", "decay_const")
    del hf["fixed_decay"]
    assert JRTConfig.from_hf_dict(hf).layer_types == ("conv", "la", "swa", "conv")


def test_decay_without_linear_attention_layers_is_inert() -> None:
    """The decay reaches only LinearAttention; PrefixLinearAttention's forward takes it in **kwargs, unused."""
    hf = hf_config(MIX) | {"fixed_decay": True, "decay_const": -3}
    assert JRTConfig.from_hf_dict(hf).layer_types == tuple(MIX)


# Fields whose authors' default jrtc does not implement, so leaving them out (or setting them so) is refused.
SETTINGS = {
    "activation_function": ("gelu_new", None),
    "rms_norm": ("false", None),
    "mlp_fc1_bias": ("true", None),
    "mlp_fc2_bias": ("true", None),
    "qkv_proj_bias": ("true", None),
    "out_proj_bias": ("true", None),
    "mixer.expand_proj": ("2", None),
    "mixer.use_bias": (None, False),
    "alt_mixer.use_mask": (None, False),
    "alt_mixer.implementation": (None, "tk"),
    "alt_mixer.scale_dim": (None, 4),
    "rotary_emb_interleaved": (None, True),
    "scale_attn_by_inverse_layer_idx": (None, True),
    "tie_word_embeddings": (None, False),
    "parallel_block": (None, True),
    "mlp_type": (None, "alt"),
}


@pytest.mark.parametrize("path", list(SETTINGS))
def test_settings_jrtc_does_not_implement_are_refused_by_name(path: str) -> None:
    default, value = SETTINGS[path]
    hf = hf_config(MIX)
    if default is not None:
        refused(without(hf, path), path, default)
    if value is not None:
        where, _, field = path.rpartition(".")
        (hf[where] if where else hf)[field] = value
        refused(hf, path)


def test_position_embeddings_left_on_are_refused() -> None:
    """GPT2Config: max_position_embeddings aliases n_positions (default 1024); the authors set it to 0."""
    hf = hf_config(MIX)
    refused(without(hf, "max_position_embeddings"), "position embeddings", "2048")
    refused(without(hf, "max_position_embeddings", "n_positions"), "position embeddings", "1024")


def test_module_fields_without_defaults() -> None:
    """PrefixLinearAttention(num_heads=None, enc_length=None) cannot be built without them; LinearAttention
    defaults to 16 heads."""
    refused(without(hf_config(MIX), "alt_mixer.num_heads"), "alt_mixer.num_heads", "no default")
    refused(without(hf_config(MIX), "alt_mixer.enc_length"), "alt_mixer.enc_length", "no default")
    based = without(hf_config(["conv", "la", "swa"], d_model=64), "alt_mixer.num_heads")
    assert JRTConfig.from_hf_dict(based).pla_heads == 16


def test_layers_without_their_mixer_would_be_full_attention() -> None:
    """create_mixer_cls falls back to MHA (softmax attention) when a listed layer's mixer is missing."""
    refused(without(hf_config(MIX), "alt_mixer"), "alt_mixer_layers", "MHA")
    refused(without(hf_config(MIX), "alt_mixer_2"), "alt_mixer_2_layers", "MHA")
    refused(without(hf_config(MIX), "mixer"), "no mixer")


def test_window_4096_hack_is_refused() -> None:
    """SlidingAttention turns window_size 4096 into 256 at layers 7 and 17 only."""
    hf = hf_config(["conv"] * 8)
    hf["alt_mixer_layers"], hf["alt_mixer_2_layers"] = [1], [7]
    hf["alt_mixer_2"]["window_size"] = 4096
    refused(hf, "4096", "layers 7 and 17")
    hf["alt_mixer_2_layers"] = [2]
    assert JRTConfig.from_hf_dict(hf).window_size == 4096


def test_layer_in_both_lists_is_sliding_window() -> None:
    """create_mixer_cls checks alt_mixer_2_layers first."""
    hf = hf_config(MIX)
    hf["alt_mixer_layers"] = [1, 2]
    assert JRTConfig.from_hf_dict(hf).layer_types == tuple(MIX)


def test_legacy_targets_still_map() -> None:
    hf = hf_config(["conv", "la", "swa"], d_model=64)
    hf["alt_mixer"]["_target_"] = "src.models.mixers.linear_attention.LinearAttention"
    hf["alt_mixer_2"]["_target_"] = "src.models.mixers.slide_fa2.SlidingsMHA"
    assert JRTConfig.from_hf_dict(hf).layer_types == ("conv", "la", "swa")
    assert TARGETS["la"].endswith("LinearAttention")


def test_parameter_count_without_building_matches_the_model() -> None:
    for layer_types in (MIX, ["conv", "la", "swa", "conv", "la"], ["swa", "pla"]):
        cfg = JRTConfig.from_hf_dict(hf_config(layer_types))
        with torch.device("meta"):
            assert cfg.num_parameters == JRTModel(cfg).num_parameters()
