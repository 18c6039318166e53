"""Checkpoint loading: the original HF layouts, jrtc .pt files, and a one-line error for each problem."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from jrt_fixtures import hf_config, one_line_error, random_state_dict, write_hf_checkpoint

import jrtc
from jrtc.cli import main
from jrtc.config import JRTConfig
from jrtc.model import JRTModel

MIX = ["conv", "pla", "swa", "conv"]


@pytest.fixture
def hf_ck(tmp_path):
    hf = hf_config(MIX)
    sd = random_state_dict(hf)
    return hf, sd, write_hf_checkpoint(tmp_path / "hf", hf, sd)


def logits(model: JRTModel) -> torch.Tensor:
    return model(torch.arange(40)[None] % 256)


@pytest.mark.parametrize(
    "fmt,saved",
    [
        ("bin", {"prefix": True, "metrics": True, "legacy": True}),
        ("bin", {"prefix": False, "metrics": False, "legacy": False}),
        ("safetensors", {"prefix": True, "metrics": False, "legacy": True}),
        ("safetensors", {"prefix": False, "metrics": False, "legacy": False}),
    ],
)
def test_hf_layouts_and_jrtc_pt_round_trip(tmp_path, fmt, saved):
    hf = hf_config(MIX)
    sd = random_state_dict(hf)
    model = jrtc.load_checkpoint(write_hf_checkpoint(tmp_path / "hf", hf, sd, fmt=fmt, **saved))
    for key, value in sd.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.lm_head.weight is model.transformer.embeddings.word_embeddings.weight
    jrtc.save_checkpoint(model, tmp_path / "m.pt")
    again = jrtc.load_checkpoint(tmp_path / "m.pt")
    assert again.config == model.config
    assert torch.equal(logits(again), logits(model))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_legacy_mixer_targets(tmp_path):
    hf = hf_config(["conv", "pla", "swa"])
    hf["mixer"]["_target_"] = "src.models.mixers.base_conv.BaseConvWithSiLU4"
    hf["alt_mixer_2"] |= {"_target_": "src.models.mixers.slide_fa2.SlidingsMHA", "do_update": True}
    model = jrtc.load_checkpoint(write_hf_checkpoint(tmp_path / "hf", hf, random_state_dict(hf)))
    assert model.config.layer_types == ("conv", "pla", "swa")


@pytest.mark.parametrize(
    "name,d,layers,pla,swa,params",
    [
        ("JRT-360M-30B", 1024, 26, [1, 6, 11, 16, 21], [2, 7, 12, 17, 22], 356.6e6),
        ("JRT-1B-50B", 1792, 36, [1, 6, 11, 16, 21, 27, 33], [2, 7, 12, 17, 22, 28, 34], 1375e6),
    ],
)
def test_published_configs(name, d, layers, pla, swa, params):
    """The configs of the released checkpoints give the published shapes and parameter counts."""
    hf = hf_config(
        ["conv"] * layers,
        d_model=d,
        heads=16,
        n_inner=2 * d,
        vocab_size=50257,
        enc_length=1024,
        window_size=256,
    )
    hf |= {"alt_mixer_layers": pla, "alt_mixer_2_layers": swa, "n_head": 16}
    cfg = JRTConfig.from_hf_dict(hf)
    assert cfg.vocab_size_padded == 50264 and cfg.pad_token_id == 220 and cfg.pla_head_dim == d // 16
    assert [i for i, t in enumerate(cfg.layer_types) if t == "pla"] == pla
    with torch.device("meta"):
        model = JRTModel(cfg)
    assert abs(model.num_parameters() - params) / params < 0.002, model.num_parameters()


def expect_error(path, *fragments: str) -> str:
    return one_line_error(lambda: jrtc.load_checkpoint(path), *fragments)


def test_error_missing_and_unreadable(tmp_path, hf_ck):
    expect_error(tmp_path / "nope.pt", "not found")
    (tmp_path / "empty").mkdir()
    expect_error(tmp_path / "empty", "no config.json")
    _, _, path = hf_ck
    (path / "pytorch_model.bin").unlink()
    expect_error(path, "no weights")
    (path / "pytorch_model.bin").write_bytes(os.urandom(10**6))  # big enough for the config's parameters
    expect_error(path, "cannot read", "pytorch_model.bin")
    (path / "pytorch_model.bin").unlink()
    (path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + bytes(10**6))
    expect_error(path, "safetensors")
    (path / "config.json").write_text("{not json")
    expect_error(path, "config.json")


def test_error_not_a_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    expect_error(tmp_path / "list.pt", "not a jrtc checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    expect_error(tmp_path / "text.pt", "cannot read")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_cannot_run_code(tmp_path):
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"format": "jrtc-checkpoint", "x": Exploit()}, f)
    expect_error(tmp_path / "evil.pt", "unsafe to load")


def test_error_unknown_layer_type(tmp_path):
    hf = hf_config(MIX)
    sd = random_state_dict(hf)
    hf["alt_mixer"]["_target_"] = "based.models.mixers.mamba.Mamba"
    expect_error(write_hf_checkpoint(tmp_path / "hf", hf, sd), "unknown layer type", "Mamba")


def test_error_keys_named(tmp_path, hf_ck):
    hf, sd, _ = hf_ck
    broken = dict(sd)
    del broken["transformer.layers.1.mixer.proj_v.weight"]
    expect_error(
        write_hf_checkpoint(tmp_path / "a", hf, broken),
        "missing keys",
        "transformer.layers.1.mixer.proj_v.weight",
    )
    extra = dict(sd) | {"transformer.layers.0.mixer.bogus.weight": torch.zeros(2)}
    expect_error(write_hf_checkpoint(tmp_path / "b", hf, extra), "unexpected keys", "mixer.bogus.weight")
    wrong = dict(sd) | {"transformer.layers.3.mlp.fc2.weight": torch.zeros(32, 100)}
    expect_error(
        write_hf_checkpoint(tmp_path / "c", hf, wrong),
        "transformer.layers.3.mlp.fc2.weight",
        "[32, 100]",
        "[32, 256]",
    )


def test_error_config_disagrees_with_weights(tmp_path, hf_ck):
    hf, sd, _ = hf_ck
    hf = json.loads(json.dumps(hf)) | {"alt_mixer_2_layers": [2, 3]}  # layer 3 holds BaseConv weights
    expect_error(
        write_hf_checkpoint(tmp_path / "x", hf, sd), "layer 3", "sliding-window attention", "BaseConv"
    )


def test_info_cli(hf_ck):
    _, _, path = hf_ck
    result = CliRunner().invoke(main, ["info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["PLA layers"] == [1] and summary["sliding-window layers"] == [2]
    assert summary["enc_length"] == 16 and summary["d_model"] == 32
    # PLA: 2 heads x (153 x 16 + 153) fp32; SWA ring: 2 x (2 heads x 4 slots x 16) fp32; convs: 2 x 64 x 2 fp32; pos.
    pla = 2 * (153 * 16 + 153) * 4
    assert summary["PLA state bytes/seq (fp32)"] == pla
    assert summary["state bytes/seq (total)"] == pla + 2 * 2 * 4 * 16 * 4 + 2 * 64 * 2 * 4 + 8


def test_cli_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "jrtc.cli", "info", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("jrtc: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
