"""Export JRT-RNN checkpoints to engines (``jrtc export``): tracing, graph functions, engine directories.

Only constants live here, so that the CLI can describe its options without importing torch.
"""

TARGETS = ("cpu", "h100", "h200", "cuda")
FORMATS = ("onnx", "aoti")  # per target: cpu writes either (onnx by default), cuda aoti
DTYPES = ("float32", "bfloat16")
QUANTIZE = ("int8", "int4")  # --quantize: block-quantized weights (cpu target, onnx format)
BYTES_TOKENIZER = "bytes"  # --tokenizer bytes: the built-in byte-level tokenizer (id b = byte b)
DEFAULT_MAX_BATCH = 8
DEFAULT_MAX_PROMPT_LEN = 512  # raised to enc_length when the encoder is longer: its first call holds it all
