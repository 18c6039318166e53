"""Test-wide setup. On the CPU (CI) the Triton kernels run in the interpreter, which Triton reads when a kernel
is defined, so it is switched on here, before any test module imports them. ``JRTC_PLA_TEST_DEVICE=cuda``
(benchmarks/gpu_check.sh) runs the kernel tests on the GPU instead."""

import os

if os.environ.get("JRTC_PLA_TEST_DEVICE", "cpu") == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

# AOTInductor packages check every call's input shapes, strides and dtypes against what they were compiled
# for (a strided state view once ran silently wrong without it).
os.environ["AOTI_RUNTIME_CHECK_INPUTS"] = "1"
