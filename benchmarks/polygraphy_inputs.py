"""Polygraphy data loader for comparing a TensorRT engine with the cpu target's ONNX graph (README, "TensorRT"):
one prefill call of a fresh sequence, the same token ids for both, zero state in each graph's dtypes.

``polygraphy run ... --data-loader-script benchmarks/polygraphy_inputs.py:fp32`` (ONNX Runtime, numpy) or
``:bf16`` (TensorRT; torch tensors, since numpy has no bfloat16). ``JRTC_MANIFEST`` names the engine
directory's ``jrtc.json`` that gives the state names, shapes and dtypes (the token ids depend only on the
vocabulary and the encoder length, the same in both).
"""

from __future__ import annotations

import json
import os

import numpy as np

MANIFEST = os.environ["JRTC_MANIFEST"]
LENGTH = int(os.environ.get("JRTC_LENGTH", "128"))


def _feed(state_dtype):
    manifest = json.load(open(MANIFEST))
    length = max(LENGTH, manifest["enc_length"])
    ids = np.random.default_rng(0).integers(0, manifest["vocab_size"], (1, length), dtype=np.int64)
    feed = {"input_ids": ids, "start_pos": np.zeros(1, np.int64), "num_pad": np.zeros(1, np.int64)}
    for state in manifest["state"]:
        feed[f"state.{state['name']}"] = state_dtype(state, (1, *state["shape"]))
    return feed


def fp32():
    yield _feed(lambda state, shape: np.zeros(shape, np.float32))


def bf16():
    import torch

    yield _feed(lambda state, shape: torch.zeros(shape, dtype=getattr(torch, state["dtype"]), device="cuda"))
