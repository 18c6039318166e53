"""The operators TensorRT's ONNX parser supports, with their types: the "Y" rows of the support matrix of
onnx/onnx-tensorrt ``docs/operators.md`` for TensorRT 10.15 ("supports operators in the inclusive range of
opset 9 to opset 24"), https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md . Only the rows a
jrtc graph may plausibly use are copied; an op missing here fails the test until its row is added from that
page. The 10.1 page (onnx-tensorrt ``release/10.1-GA``, the oldest 10.x one read) lists the same types for
every op below except integer Pow and INT64 ConstantOfShape (:data:`NEWER_THAN_10_1`), which a graph for
TensorRT 10.9 should therefore avoid.
"""

TENSORRT_VERSION = "10.15"
OPSET_RANGE = (9, 24)

F = ("FP32", "FP16", "BF16")
I = ("INT32", "INT64")  # noqa: E741

SUPPORTED = {
    "Abs": F + I,
    "Add": F + I,
    "And": ("BOOL",),
    "Cast": F + I + ("UINT8", "BOOL"),
    "Concat": F + I + ("BOOL",),
    "Constant": F + I + ("BOOL",),
    "ConstantOfShape": F + I + ("BOOL",),
    "Cos": F,
    "CumSum": F,
    "Div": F + I,
    "Equal": F + I,
    "Exp": F,
    "Expand": F + I + ("BOOL",),
    "Gather": F + I + ("BOOL",),
    "GatherElements": F + I + ("BOOL",),
    "Gemm": F,
    "Greater": F + I,
    "GreaterOrEqual": F + I,
    "Identity": F + I + ("BOOL",),
    "Less": F + I,
    "LessOrEqual": F + I,
    "MatMul": F,
    "Max": F + I,
    "Min": F + I,
    "Mod": F + I,
    "Mul": F + I,
    "Neg": F + I,
    "Not": ("BOOL",),
    "Or": ("BOOL",),
    "Pow": F + I,
    "Range": F + I,
    "Reciprocal": F,
    "ReduceMax": F + I,
    "ReduceMean": F + I,
    "ReduceSum": F + I,
    "Reshape": F + I + ("BOOL",),
    "Shape": F + I + ("BOOL",),
    "Sigmoid": F,
    "Sin": F,
    "Slice": F + I + ("BOOL",),
    "Softmax": F,
    "Split": F + I + ("BOOL",),
    "Sqrt": F,
    "Squeeze": F + I + ("BOOL",),
    "Sub": F + I,
    "Tanh": F,
    "Transpose": F + I + ("BOOL",),
    "Trilu": F + I + ("BOOL",),
    "Unsqueeze": F + I + ("BOOL",),
    "Where": F + I + ("BOOL",),
}
NEWER_THAN_10_1 = {("Pow", "INT32"), ("Pow", "INT64"), ("ConstantOfShape", "INT64")}
# Not supported for integers (the parser's types): Clip (FP32, FP16, BF16 only), so no integer clamps.
