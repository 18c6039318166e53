"""The layer types of JRT-RNN, one module each. Every mixer takes ``(x, state, pos, key_mask)`` and returns
``(y, new_state)``, where ``state`` holds that layer's recurrent tensors by their short names."""

from jrtc.layers.base_conv import BaseConv
from jrtc.layers.mlp import GatedMLP, RMSNorm
from jrtc.layers.prefix_linear_attention import PrefixLinearAttention
from jrtc.layers.sliding_window_attention import SlidingWindowAttention

__all__ = ["BaseConv", "GatedMLP", "PrefixLinearAttention", "RMSNorm", "SlidingWindowAttention"]
