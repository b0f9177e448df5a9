"""Where ``||q_i - q_j||^2 / N`` is still a KL divergence, and how distances past it are shown.

``2 KL(p_i, p_j) ~= Var_x(l_i(x) - l_j(x))`` is a second-order expansion of the KL around
models that are close (arXiv 2502.16173, section 3). Far apart, the variance of the
log-likelihood difference keeps growing with the square of the per-text log-ratio while the
KL does not, so the number stops being a divergence: the demo's pairs table printed 283
bits/byte between SmolLM2-135M and a 2.5M-parameter zoo model, whose cross-entropies on the
corpus are 1.2-3.1 bits/byte.

Past ``max_bits_per_byte`` (chosen from sampled KLs of zoo pairs at growing distances, see
the README section "Where the KL estimate holds") an estimate is reported as a squared
distance on the map only: ``two_kl_nats`` keeps the squared distance per text, the
bits-per-byte columns are null and ``in_kl_regime`` is false.
"""

import polars as pl

BITS_COLUMNS = ("two_kl_bits_per_byte", "two_kl_bits_per_byte_low", "two_kl_bits_per_byte_high")


def mark_kl_regime(table: pl.DataFrame, max_bits_per_byte: float) -> pl.DataFrame:
    """Add ``in_kl_regime`` (estimate <= ``max_bits_per_byte``) and null the bits-per-byte
    columns of the rows outside it (their ``two_kl_nats`` stays, as a map distance)."""
    inside = pl.col("two_kl_bits_per_byte") <= max_bits_per_byte
    present = [c for c in BITS_COLUMNS if c in table.columns]
    return table.with_columns(inside.alias("in_kl_regime")).with_columns(
        pl.when(pl.col("in_kl_regime")).then(pl.col(c)).otherwise(None).alias(c) for c in present
    )
