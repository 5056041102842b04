"""Runs the Triton-interpreter cases (tests/flashkat_interp_cases.py) in a subprocess with
TRITON_INTERPRET=1 set before triton loads, so the fast and baseline kernels are exercised on
CPU tensors in CI without affecting other tests in this process."""

from __future__ import annotations

from tests.flashkat_interp import NEEDS_TRITON, run_under_interpreter


@NEEDS_TRITON
def test_triton_kernels_under_interpreter():
    run_under_interpreter("flashkat_interp_cases.py")
