"""Prefix linear attention (PLA): ``naive`` is the PyTorch reference the kernels are tested against."""
