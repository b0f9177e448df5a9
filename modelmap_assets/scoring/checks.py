"""Checks of the `likelihood` asset: each model's file against the corpus as it is now."""

import dagster as dg
import numpy as np
import polars as pl

from modelmap.likelihoods import corpus_rows
from resources.storage import StorageResource

LIKELIHOOD = dg.AssetKey("likelihood")

CHECKS = ("text_ids_match_corpus", "all_finite", "corpus_hash_current")


def likelihood_checks(
    storage: StorageResource,
    key: str,
    scored_on: str,
    expected_ids: list[int] | None = None,
    corpus_now: tuple[pl.DataFrame, dict] | None = None,
) -> list[dg.AssetCheckEvaluation]:
    """Checks of partition `key`'s file against the corpus as it is now (read back from disk,
    or `corpus_now` when the caller has just read it); a budget file is checked against its
    selection's text ids (`expected_ids`)."""
    corpus_df, corpus_meta = corpus_now or storage.read_corpus()
    written = corpus_rows(storage.likelihood_path(key))
    wanted = corpus_df["text_id"].to_list() if expected_ids is None else expected_ids
    same_ids = written["text_id"].to_list() == wanted
    n_bad = int((~np.isfinite(written["loglik"].to_numpy())).sum())
    current = corpus_meta["corpus_hash"]
    return [
        dg.AssetCheckEvaluation(
            asset_key=LIKELIHOOD,
            partition=key,
            check_name="text_ids_match_corpus",
            passed=same_ids,
            metadata={"n_rows": written.height, "n_expected": len(wanted)},
        ),
        dg.AssetCheckEvaluation(
            asset_key=LIKELIHOOD,
            partition=key,
            check_name="all_finite",
            passed=n_bad == 0,
            metadata={"n_bad": n_bad},
        ),
        dg.AssetCheckEvaluation(
            asset_key=LIKELIHOOD,
            partition=key,
            check_name="corpus_hash_current",
            passed=scored_on == current,
            metadata={"scored_on": scored_on, "current": current},
        ),
    ]
