"""Kernels of jrtc: Triton sources beside their plain PyTorch references (installed as ``jrtc.plugins``)."""
