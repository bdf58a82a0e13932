"""The fused Triton nearest-codeword kernel, run by Triton's CPU interpreter (no GPU needed).

``TRITON_INTERPRET=1`` must be set before Triton is first imported, so the checks run in a fresh
subprocess. The interpreter is slow: shapes are small, and deliberately not multiples of the blocks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(
    """
    import json
    import torch
    from dgm_core.quantization import nearest_codeword
    from dgm_core.quantization.triton_kernels import nearest_codeword_triton, triton_available

    def brute(x, codebook):
        return torch.cdist(x.double(), codebook.double()).pow(2)

    def non_tie_mismatches(indices, d64):
        expected = d64.argmin(1)
        rows = (indices != expected).nonzero().flatten()
        gap = d64[rows, indices[rows]] - d64[rows, expected[rows]]
        scale = d64[rows].abs().max(1).values
        return int((gap > 1e-6 * scale).sum())

    report = {"available": triton_available(), "cases": []}
    g = torch.Generator().manual_seed(0)
    # (N, C, K, blocks): none a multiple of its block; one case with the production block sizes.
    cases = [
        (37, 21, 45, dict(block_n=16, block_k=16, block_c=16)),
        (70, 33, 19, dict(block_n=32, block_k=16, block_c=16)),
        (5, 7, 3, dict(block_n=16, block_k=16, block_c=16)),
        (131, 40, 150, {}),
    ]
    for n, c, k, blocks in cases:
        x = torch.randn(n, c, generator=g) * 2 + 0.5
        codebook = torch.randn(k, c, generator=g)
        indices, sq = nearest_codeword_triton(x, codebook, **blocks)
        d64 = brute(x, codebook)
        torch_indices, _ = nearest_codeword(x, codebook, backend="torch")
        report["cases"].append({
            "shape": [n, c, k],
            "non_tie_mismatches": non_tie_mismatches(indices, d64),
            "agrees_with_torch_path": bool(torch.equal(indices, torch_indices)),
            "max_sq_error": float((sq.double() - d64.min(1).values).abs().max()),
            "dtype": str(indices.dtype),
        })

    # Exact ties go to the first codeword, across a tile boundary too (codeword 3 == codeword 20).
    codebook = torch.randn(24, 5, generator=g)
    codebook[20] = codebook[3]
    x = codebook[[3, 20, 7]] + 1e-3
    indices, _ = nearest_codeword_triton(x, codebook, block_n=16, block_k=16, block_c=16)
    report["ties"] = indices.tolist()

    # NaN/inf features come out as non-finite distances (the quantizer's finiteness check).
    x = torch.randn(20, 9, generator=g)
    x[4, 3] = float("nan")
    x[11, 0] = float("inf")
    _, sq = nearest_codeword_triton(x, torch.randn(17, 9, generator=g), block_n=16, block_k=16, block_c=16)
    report["finite"] = torch.isfinite(sq).tolist()

    # The public entry point routes to the kernel when asked.
    x = torch.randn(9, 6, generator=g)
    codebook = torch.randn(11, 6, generator=g)
    via_dispatch, _ = nearest_codeword(x, codebook, backend="triton")
    report["dispatch_ok"] = non_tie_mismatches(via_dispatch, brute(x, codebook)) == 0
    print("REPORT" + json.dumps(report))
    """
)


@pytest.mark.slow
def test_triton_kernel_matches_float64_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("REPORT"))
    report = json.loads(line[len("REPORT") :])
    assert report["available"]
    for case in report["cases"]:
        assert case["non_tie_mismatches"] == 0, case
        assert case["agrees_with_torch_path"], case
        assert case["max_sq_error"] < 1e-3, case
        assert case["dtype"] == "torch.int64"
    assert report["ties"] == [3, 3, 7]
    finite = report["finite"]
    assert not finite[4] and not finite[11]
    assert sum(finite) == len(finite) - 2
    assert report["dispatch_ok"]
