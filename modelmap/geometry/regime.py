"""Where ``||q_i - q_j||^2 / N`` is still a KL divergence, and how distances past it are shown.

``2 KL(p_i, p_j) ~= Var_x(l_i(x) - l_j(x))`` is a second-order expansion of the KL around
models that are close (arXiv 2502.16173, section 3). Far apart, the variance of the
log-likelihood difference keeps growing with the square of the per-text log-ratio while the
KL does not, so the number stops being a divergence: the demo's pairs table printed 283
bits/byte between SmolLM2-135M and a 2.5M-parameter zoo model, whose cross-entropies on the
corpus are 1.2-3.1 bits/byte.

Past ``max_bits_per_byte`` (default 1e-3, chosen from sampled KLs of zoo pairs at growing
distances, see the README section "Where the KL estimate holds") an estimate is reported as
a squared distance on the map only: ``two_kl_nats`` keeps the squared distance per text, the
bits-per-byte columns are null and ``in_kl_regime`` is false.
"""

import polars as pl

#: 2KL estimates above this many bits per byte are outside the KL regime (README, "Where the
#: KL estimate holds"): reported as a map distance, not as a divergence. On the zoo the
#: estimate stayed within a factor 3 of the sampled KL up to 7e-4 bits/byte (bfloat16, weight
#: noise up to 10%) and exceeded it 13-143 times from 0.017 bits/byte on (fine-tunes, bases).
KL_REGIME_MAX_BITS_PER_BYTE = 1e-3

BITS_COLUMNS = ("two_kl_bits_per_byte", "two_kl_bits_per_byte_low", "two_kl_bits_per_byte_high")


def mark_kl_regime(table: pl.DataFrame, max_bits_per_byte: float) -> pl.DataFrame:
    """Add ``in_kl_regime`` (estimate <= ``max_bits_per_byte``) and null the bits-per-byte
    columns of the rows outside it (their ``two_kl_nats`` stays, as a map distance)."""
    inside = pl.col("two_kl_bits_per_byte") <= max_bits_per_byte
    present = [c for c in BITS_COLUMNS if c in table.columns]
    return table.with_columns(inside.alias("in_kl_regime")).with_columns(
        pl.when(pl.col("in_kl_regime")).then(pl.col(c)).otherwise(None).alias(c) for c in present
    )


#: A scale to read distances by, in bits per byte: (what differs, low, high, source).
#: The zoo rows come from ``scripts/measure_kl_regime.py`` (README, "A scale to read
#: distances by"); the paper rows from the KL-scale paper (arXiv 2505.15353), real models.
SCALE_BANDS: list[tuple[str, float, float, str]] = [
    ("the same model in bfloat16 vs float32", 6.4e-7, 4.6e-5, "zoo"),
    ("the same model in bfloat16 vs float32", 1.3e-3, 1.3e-3, "SmolLM2-135M"),
    ("weight noise, 0.1% of each tensor's sd", 2.4e-6, 3.2e-6, "zoo"),
    ("weight noise, 0.1% of each tensor's sd", 6.3e-5, 6.3e-5, "SmolLM2-135M"),
    ("weight noise, 1% of each tensor's sd", 3.6e-6, 3.2e-4, "zoo"),
    ("weight noise, 1% of each tensor's sd", 6.3e-3, 6.3e-3, "SmolLM2-135M"),
    ("a short fine-tune vs its base (outside the KL regime)", 0.017, 2.0, "zoo"),
    ("a 20-step fine-tune vs its base (outside the KL regime)", 0.63, 0.63, "SmolLM2-135M"),
    ("another base of the same architecture (outside the KL regime)", 124.0, 124.0, "zoo"),
    ("another architecture (outside the KL regime)", 0.6, 124.0, "zoo"),
    ("consecutive checkpoints", 0.02, 0.07, "paper"),
    ("different random seeds", 0.1, 0.1, "paper"),
    ("different model sizes", 0.3, 2.0, "paper"),
]


def scale_bands_html(max_bits_per_byte: float) -> str:
    """The scale bands and the regime limit as an HTML fragment for the map page."""
    rows = "".join(
        f"<tr><td>{what}</td><td>{lo:.3g}{'' if lo == hi else f' - {hi:.3g}'}</td>"
        f"<td>{src}</td></tr>"
        for what, lo, hi, src in SCALE_BANDS
    )
    return (
        "<h3>A scale to read distances by (2KL, bits per byte)</h3>"
        "<table border='1' cellpadding='4' style='border-collapse:collapse'>"
        "<tr><th>what differs</th><th>2KL bits/byte</th><th>measured on</th></tr>"
        f"{rows}</table>"
        f"<p>Estimates above {max_bits_per_byte:g} bits/byte are outside the KL regime: "
        "the tables give them as a squared map distance (nats per text), not as a KL.</p>"
    )
