"""Checks of the geometry assets."""

import dagster as dg
import numpy as np

CENTRED = "rows_and_columns_centred"


def centring_check(Q: np.ndarray, block_rows: int = 4096) -> dg.AssetCheckResult:
    """Every row and every column of Q has mean ~0 (float32 round-off allowed)."""
    K, N = Q.shape
    col_sums = np.zeros(N, dtype=np.float64)
    worst_row, sq = 0.0, 0.0
    for start in range(0, K, block_rows):
        block = np.asarray(Q[start : start + block_rows], dtype=np.float64)
        worst_row = max(worst_row, float(np.abs(block.mean(axis=1)).max()))
        col_sums += block.sum(axis=0)
        sq += float((block**2).sum())
    worst_col = float(np.abs(col_sums / K).max())
    rms = (sq / (K * N)) ** 0.5
    tolerance = 1e-4 * max(rms, 1.0)
    return dg.AssetCheckResult(
        check_name=CENTRED,
        passed=bool(max(worst_row, worst_col) <= tolerance),
        metadata={
            "max_abs_row_mean": worst_row,
            "max_abs_col_mean": worst_col,
            "rms_Q": rms,
            "tolerance": tolerance,
        },
    )
