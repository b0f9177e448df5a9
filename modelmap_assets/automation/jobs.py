"""Jobs: scoring models (one run per model or batch) and rebuilding the map."""

from __future__ import annotations

import dagster as dg

from modelmap_assets.scoring.assets import likelihood
from modelmap_assets.scoring.benchmarks import benchmark_scores

score_models_job = dg.define_asset_job(
    "score_models",
    selection=[likelihood, benchmark_scores],
    description="Score models (`models` partitions) on the corpus and on the benchmarks.",
)
