"""Sliding-window attention (SWA) over a ring of the last W keys: ``naive`` is the PyTorch reference the kernel
and the exported graphs are tested against."""
