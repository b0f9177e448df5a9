"""The neighbours and pairs tables of `kl_table` (`modelmap.geometry.kl_tables`) on small L."""

import numpy as np
import polars as pl
import pytest

from modelmap.geometry.centering import Centring
from modelmap.geometry.kl import two_kl_nats
from modelmap.geometry.kl_tables import KLTableSettings, kl_tables

MEAN_BYTES = 900.0


@pytest.fixture
def mapped():
    """Six models in two families on 40 texts: keys, float64 L, the fitted centring and Q."""
    rng = np.random.default_rng(4)
    families = rng.normal(0, 2, size=(2, 40))
    L = -200 + families[np.arange(6) % 2] + rng.normal(0, 0.5, size=(6, 40))
    keys = [f"f{i % 2}/m{i}" for i in range(6)]
    centring = Centring(percentile=2.0).fit(L)
    return keys, L, centring, centring.transform(L)


def test_tables_of_the_mapped_models(mapped):
    keys, _, _, Q = mapped
    settings = KLTableSettings(neighbours=3, bootstrap_resamples=50, kl_regime_max_bits_per_byte=1)
    neighbours, pairs = kl_tables(Q, keys, MEAN_BYTES, settings)
    assert neighbours.height == 6 * 3 and pairs.height == 15
    assert set(neighbours["text_set"]) == set(pairs["text_set"]) == {"all"}
    D = two_kl_nats(Q)
    first = neighbours.filter(pl.col("rank") == 1)
    for model, neighbour, value in first.select("model", "neighbour", "two_kl_nats").iter_rows():
        i, j = keys.index(model), keys.index(neighbour)
        assert value == pytest.approx(D[i, j]) and value == pytest.approx(np.delete(D[i], i).min())
    # Same family nearest: the families differ by far more than the per-model noise.
    assert all(a[:2] == b[:2] for a, b in first.select("model", "neighbour").iter_rows())
    assert first["distinguishable"].is_not_null().all()
    for table in (neighbours, pairs):
        assert (table["two_kl_nats_low"] <= table["two_kl_nats"]).all()
        assert (table["two_kl_nats"] <= table["two_kl_nats_high"]).all()


def test_no_pairs_table_past_max_pair_models(mapped):
    keys, _, _, Q = mapped
    neighbours, pairs = kl_tables(Q, keys, MEAN_BYTES, KLTableSettings(max_pair_models=5))
    assert pairs is None and neighbours.height == 6 * 5


def test_a_budget_model_on_every_text_matches_its_full_row(mapped):
    # A copy of model 3 scored on all 40 texts with equal weights: its weighted distances
    # are the full-row 2KL, so its nearest model is model 3 at distance 0.
    keys, L, centring, Q = mapped
    N = L.shape[1]
    selection = pl.DataFrame(
        {
            "text_id": np.arange(N),
            "count": np.ones(N, dtype=np.int64),
            "probability": np.full(N, 1.0 / N),
            "weight": np.ones(N),
        }
    )
    budget = [{"key": "f1/copy", "loglik": L[3], "selection": selection, "columns": np.arange(N)}]
    neighbours, pairs = kl_tables(
        Q,
        keys,
        MEAN_BYTES,
        KLTableSettings(bootstrap_resamples=30, kl_regime_max_bits_per_byte=10.0),
        budget=budget,
        L_clipped=centring.clip(L),
        clip_threshold_nats=centring.clip_value,
    )
    rows = neighbours.filter(pl.col("model") == "f1/copy")
    assert rows["text_set"].to_list() == ["budget"] * 5
    assert rows["neighbour"][0] == "f1/m3" and rows["two_kl_nats"][0] == pytest.approx(0, abs=1e-9)
    copy_pairs = pairs.filter(pl.col("model_a") == "f1/copy").sort("model_b")
    full = two_kl_nats(Q)[3]
    expected = dict(zip(keys, full, strict=True))
    got = dict(zip(copy_pairs["model_b"], copy_pairs["two_kl_nats"], strict=True))
    assert got == pytest.approx(expected, abs=1e-9)
