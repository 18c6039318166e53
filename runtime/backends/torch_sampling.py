"""Token sampling where the logits are, in torch: the draws of ``runtime/sampling.py``, batched.

Greedy rows take the first argmax (exactly the host sampler's token for the same logits); sampled rows take
the Gumbel-max of their kept scaled logits with noise hashed from ``(seed, index, token id)``, in fp64 as on
the host (in fp32 the draws near 1 would round up to an infinite Gumbel value). Only the B token ids leave
the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from jrtc.errors import JrtcError
from jrtc.runtime.sampling import NONFINITE_LOGITS, Draw, mix32, seed_key


def _thresholds(scaled: torch.Tensor, draws: Sequence[Draw]) -> torch.Tensor:
    """Per row, the smallest scaled logit that survives top-k and top-p ([B], -inf when nothing is cut)."""
    batch, vocab = scaled.shape
    device = scaled.device
    threshold = torch.full((batch,), float("-inf"), dtype=scaled.dtype, device=device)
    top_k = torch.tensor([d.params.top_k if 0 < d.params.top_k < vocab else 0 for d in draws], device=device)
    if bool((top_k > 0).any()):
        kth = torch.topk(scaled, int(top_k.max()), dim=-1).values
        picked = kth.gather(1, (top_k - 1).clamp(min=0)[:, None])[:, 0]
        threshold = torch.where(top_k > 0, picked, threshold)
    top_p = torch.tensor([d.params.top_p for d in draws], dtype=scaled.dtype, device=device)
    if bool((top_p < 1.0).any()):
        ordered = scaled.sort(dim=-1, descending=True).values
        probs = torch.softmax(ordered.masked_fill(ordered < threshold[:, None], float("-inf")), dim=-1)
        # The smallest prefix whose mass reaches top_p: a token stays if the mass before it is short.
        kept = ((probs.cumsum(-1) - probs) < top_p[:, None]).sum(-1)
        nucleus = ordered.gather(1, (kept - 1)[:, None])[:, 0]
        threshold = torch.where(top_p < 1.0, torch.maximum(threshold, nucleus), threshold)
    return threshold


def sample(logits: torch.Tensor, draws: Sequence[Draw]) -> list[int]:
    """One token id per row of ``logits [vocab]`` rows (the real vocabulary)."""
    tokens = logits.argmax(dim=-1)
    temperature = [d.params.temperature for d in draws]
    device = logits.device
    if any(temperature):
        # As the host's scale(): the maximum out first, so a tiny temperature is greedy, not NaN.
        shifted = logits.double() - logits.max(dim=-1, keepdim=True).values.double()
        temperatures = torch.tensor([t or 1.0 for t in temperature], dtype=torch.float64, device=device)
        scaled = shifted / temperatures[:, None]
        keep = scaled >= _thresholds(scaled, draws)[:, None]
        keys = torch.tensor([seed_key(d.seed, d.index) for d in draws], dtype=torch.int64, device=device)
        hashed = mix32(keys[:, None] ^ torch.arange(scaled.shape[1], dtype=torch.int64, device=device))
        gumbel = -torch.log(-torch.log((hashed.double() + 0.5) / 2**32))
        choice = torch.where(keep, scaled + gumbel, float("-inf")).argmax(dim=-1)
        tokens = torch.where(torch.tensor([t > 0 for t in temperature], device=device), choice, tokens)
    # Rows with NaN or infinite logits come back as -1: the check rides on the one transfer of the ids.
    ids = torch.where(torch.isfinite(logits).all(dim=-1), tokens, -1).tolist()
    if -1 in ids:
        raise JrtcError(NONFINITE_LOGITS)
    return ids
