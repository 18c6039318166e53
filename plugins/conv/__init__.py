"""The short depthwise causal convolution of BaseConv layers: ``naive`` is the PyTorch reference the kernel and
the exported graphs are tested against."""
