"""The PyTorch model against an independent float64 computation of the published formulas, and the
recurrent form (prefill + steps) against the parallel form."""

from __future__ import annotations

import math

import pytest
import torch
from jrt_fixtures import hf_config, random_state_dict, write_hf_checkpoint

import jrtc

MIXES = {
    "jrt": ["conv", "pla", "swa", "conv", "pla"],
    "jrt-swa-first": ["swa", "pla", "conv"],
    "based": ["conv", "la", "swa", "conv"],
}
ENC = 16
WINDOW = 8  # queries see themselves and 4 previous tokens


# ---- float64 reference, written from reference/jrt-model.md, sharing no code with jrtc -----------------
def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def taylor273(x: torch.Tensor) -> torch.Tensor:
    """The reference TaylorExp: [1, x/F^(1/4), vec(x x^T)/(sqrt2 sqrt F)], F = 16."""
    outer = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x / 2.0, outer / 4.0], dim=-1)


def ref_conv(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    u = x @ sd[p + "in_proj.weight"].T + sd[p + "in_proj.bias"]
    u1, u2 = u.chunk(2, dim=-1)
    w = sd[p + "conv.conv.weight"][:, 0]  # [2d, 3]; index 2 multiplies the current token
    c = torch.zeros_like(u1)
    for t in range(u1.shape[1]):
        for j in range(3):
            src = t - 2 + j
            if src >= 0:
                c[:, t] += w[:, j] * u1[:, src]
    return (torch.nn.functional.silu(c) * u2) @ sd[p + "out_proj.weight"].T + sd[p + "out_proj.bias"]


def ref_linear_attention(
    x: torch.Tensor, sd: dict, p: str, heads: int, mask, enc: int | None
) -> torch.Tensor:
    b, n, d = x.shape

    def proj(name: str, width: int, rows: torch.Tensor) -> torch.Tensor:
        return (rows @ sd[p + name + ".weight"].T).view(b, rows.shape[1], heads, width).transpose(1, 2)

    q, k, v = proj("proj_q", 16, x), proj("proj_k", 16, x), proj("proj_v", d // heads, x)
    if mask is not None:
        k = k * mask[:, None, :, None]
    Q, K = taylor273(q), taylor273(k)
    A = (Q @ K.transpose(-1, -2)).tril()
    num, den = A @ v, A.sum(-1)
    if enc is not None:
        m = min(enc, n)
        ke, ve = proj("proj_k_enc", 16, x[:, :m]), proj("proj_v_enc", d // heads, x[:, :m])
        if mask is not None:
            ke = ke * mask[:, None, :m, None]
        A2 = Q @ taylor273(ke).transpose(-1, -2)  # every query sees the whole prefix
        num, den = num + A2 @ ve, den + A2.sum(-1)
    y = num / (den[..., None] + 1e-12)
    return y.transpose(1, 2).reshape(b, n, d) @ sd[p + "out_proj.weight"].T


def ref_sliding(x: torch.Tensor, sd: dict, p: str, heads: int, window: int) -> torch.Tensor:
    b, n, d = x.shape
    hd = d // heads
    qkv = (x @ sd[p + "Wqkv.weight"].T).view(b, n, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    inv = 1.0 / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rope(t: torch.Tensor) -> torch.Tensor:
        rot = torch.cat([-t[..., hd // 2 :], t[..., : hd // 2]], -1)
        return t * cos + rot * sin

    s = rope(q) @ rope(k).transpose(-1, -2) / math.sqrt(hd)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    s = s.masked_fill((j > i) | (j < i - window // 2), float("-inf"))
    y = s.softmax(-1) @ v
    return y.transpose(1, 2).reshape(b, n, d) @ sd[p + "out_proj.weight"].T


def reference_logits(hf: dict, sd: dict, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    m = None if mask is None else mask.double()
    heads = hf["alt_mixer"]["num_heads"]
    is_pla = hf["alt_mixer"]["_target_"].endswith("PrefixLinearAttention")
    x = sd["transformer.embeddings.word_embeddings.weight"][ids]
    for i in range(hf["n_layer"]):
        p = f"transformer.layers.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        if i in hf["alt_mixer_layers"]:
            h = ref_linear_attention(
                h, sd, p + "mixer.", heads, m, hf["alt_mixer"]["enc_length"] if is_pla else None
            )
        elif i in hf["alt_mixer_2_layers"]:
            h = ref_sliding(
                h, sd, p + "mixer.", hf["alt_mixer_2"]["num_heads"], hf["alt_mixer_2"]["window_size"]
            )
        else:
            h = ref_conv(h, sd, p + "mixer.")
        x = x + h
        y, gate = (rms(x, sd[p + "norm2.weight"]) @ sd[p + "mlp.fc1.weight"].T).chunk(2, -1)
        x = x + (y * torch.nn.functional.silu(gate)) @ sd[p + "mlp.fc2.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ sd["transformer.embeddings.word_embeddings.weight"].T


# ---- tests ---------------------------------------------------------------------------------------
def load_random(tmp_path, mix: str, seed: int = 0, **kw):
    hf = hf_config(MIXES[mix], enc_length=ENC, window_size=WINDOW, **kw)
    sd = random_state_dict(hf, seed)
    model = jrtc.load_checkpoint(write_hf_checkpoint(tmp_path / mix, hf, sd))
    return hf, sd, model


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    err = (ours.double() - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 2e-5 * max(scale, 1.0), f"max |diff| {err:.3g} (logit scale {scale:.3g})"


@pytest.mark.parametrize("mix", sorted(MIXES))
@pytest.mark.parametrize("length", [5, ENC, 3 * ENC + 5])
def test_parallel_matches_float64_reference(tmp_path, mix, length):
    hf, sd, model = load_random(tmp_path, mix)
    ids = torch.randint(0, 256, (2, length), generator=torch.Generator().manual_seed(length))
    assert_logits_close(model(ids), reference_logits(hf, sd, ids))


@pytest.mark.parametrize("mix", ["jrt", "based"])
def test_left_padding_mask_matches_reference(tmp_path, mix):
    hf, sd, model = load_random(tmp_path, mix)
    ids = torch.randint(0, 256, (2, ENC), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, ENC)
    ids[0, :6], mask[0, :6] = 32, 0  # row 0: six left pads (spaces), masked; row 1: no padding
    ours = model(ids, mask)
    assert_logits_close(ours, reference_logits(hf, sd, ids, mask))
    # The mask matters: without it the padded row reads differently.
    assert (ours[0] - model(ids)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("mix", sorted(MIXES))
def test_prefill_and_200_steps_match_parallel(tmp_path, mix):
    _, _, model = load_random(tmp_path, mix, seed=3)
    prompt, steps = ENC, 200
    ids = torch.randint(0, 256, (2, prompt + steps), generator=torch.Generator().manual_seed(7))
    mask = torch.ones(2, prompt + steps, dtype=torch.bool)
    ids[1, :5], mask[1, :5] = 32, False
    full = model(ids, mask)

    state = model.init_state(2)
    layout = {k: (v.shape, v.dtype, v.data_ptr(), v.nbytes) for k, v in state.items()}
    torch.testing.assert_close(model.prefill(ids[:, :prompt], state, mask[:, :prompt]), full[:, :prompt])
    for t in range(prompt, prompt + steps):
        torch.testing.assert_close(model.step(ids[:, t], state), full[:, t], rtol=1e-4, atol=1e-4)
    # Constant memory: the same tensors, updated in place, never reallocated or grown.
    assert {k: (v.shape, v.dtype, v.data_ptr(), v.nbytes) for k, v in state.items()} == layout
    assert state["pos"].tolist() == [prompt + steps] * 2


def test_chunked_prefill_matches_parallel(tmp_path):
    _, _, model = load_random(tmp_path, "jrt", seed=5)
    ids = torch.randint(0, 256, (1, 3 * ENC), generator=torch.Generator().manual_seed(2))
    full = model(ids)
    state = model.init_state(1)
    chunks = [
        model.prefill(ids[:, a:b], state) for a, b in [(0, ENC + 3), (ENC + 3, 2 * ENC), (2 * ENC, 3 * ENC)]
    ]
    torch.testing.assert_close(torch.cat(chunks, 1), full, rtol=1e-4, atol=1e-4)


def test_mixed_positions_in_one_batch(tmp_path):
    """Rows at different positions (continuous batching) step together as they would alone."""
    _, _, model = load_random(tmp_path, "jrt", seed=6)
    a = torch.randint(0, 256, (1, ENC + 9), generator=torch.Generator().manual_seed(3))
    b = torch.randint(0, 256, (1, ENC + 2), generator=torch.Generator().manual_seed(4))
    sa, sb, both = model.init_state(1), model.init_state(1), model.init_state(2)
    model.prefill(a[:, :-1], sa)
    model.prefill(b[:, :-1], sb)
    for name in both:
        both[name].copy_(torch.cat([sa[name], sb[name]]))
    together = model.step(torch.cat([a[:, -1], b[:, -1]]), both)
    torch.testing.assert_close(together, torch.cat([model.step(a[:, -1], sa), model.step(b[:, -1], sb)]))


def test_bfloat16_load_runs_close_to_fp32(tmp_path):
    hf = hf_config(MIXES["jrt"], enc_length=ENC, window_size=WINDOW)
    path = write_hf_checkpoint(tmp_path / "ck", hf, random_state_dict(hf))
    ids = torch.randint(0, 256, (1, 24))
    fp32 = jrtc.load_checkpoint(path)(ids)
    bf16 = jrtc.load_checkpoint(path, dtype=torch.bfloat16)
    state = bf16.init_state(1)
    assert state["layers.1.kv"].dtype == torch.float32 and state["layers.2.k"].dtype == torch.bfloat16
    assert (bf16(ids) - fp32).abs().max() < 0.1 * fp32.abs().max()


def test_triton_kernels_match_pytorch_path(tmp_path):
    """``use_kernels=True`` runs PLA through the Triton kernels (the interpreter on the CPU, see conftest.py)."""
    hf = hf_config(MIXES["jrt"], enc_length=ENC, window_size=WINDOW)
    path = write_hf_checkpoint(tmp_path / "ck", hf, random_state_dict(hf, seed=9))
    reference, kernels = jrtc.load_checkpoint(path), jrtc.load_checkpoint(path, use_kernels=True)
    assert kernels.transformer.layers[1].mixer.ops.__name__ == "jrtc.plugins.pla.ops"
    ids = torch.randint(0, 256, (2, ENC + 7), generator=torch.Generator().manual_seed(8))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[1, :4] = False
    torch.testing.assert_close(kernels(ids, mask), reference(ids, mask), rtol=1e-4, atol=1e-4)
    states = kernels.init_state(2), reference.init_state(2)
    for model, state in zip((kernels, reference), states, strict=True):
        model.prefill(ids[:, :ENC], state, mask[:, :ENC])
    for t in range(ENC, ENC + 7):
        torch.testing.assert_close(
            kernels.step(ids[:, t], states[0]), reference.step(ids[:, t], states[1]), rtol=1e-4, atol=1e-4
        )
    for name in states[1]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-4, atol=1e-4)
