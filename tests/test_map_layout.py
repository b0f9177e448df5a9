"""The map's layout (`modelmap.geometry.layout`) and the text budget's sizing
(`modelmap.geometry.text_selection`) on small synthetic maps."""

import numpy as np
import polars as pl
import pytest

from modelmap.geometry.centering import Centring
from modelmap.geometry.layout import lay_out_map, previous_map
from modelmap.geometry.text_selection import TextBudgetSettings, plot_curve_png, size_text_budget
from modelmap.storage import write_parquet
from workshop.synthetic import synthetic_loglik


@pytest.fixture(scope="module")
def synthetic():
    """12 models in 3 families on 300 texts: L (float32 nats), families, centring, Q."""
    L, families = synthetic_loglik(K=12, N=300, n_families=3, seed=1)
    centring = Centring(percentile=2.0).fit(L)
    return L, families, centring, centring.transform(L)


def _keys(families):
    return [f"{f}/m{i}" for i, f in enumerate(families)]


def test_a_budget_copy_lands_on_its_model(synthetic):
    L, families, centring, Q = synthetic
    N = L.shape[1]
    selection = pl.DataFrame({"weight": np.ones(N)})
    budget = [
        {
            "key": "x/copy",
            "family": families[4],
            "loglik": L[4],
            "selection": selection,
            "columns": np.arange(N),
        }
    ]
    mapped = slice(0, 6)  # below MIN_MODELS_FOR_TSNE: a PCA map, quick
    layout = lay_out_map(
        Q[mapped],
        _keys(families)[mapped],
        families[mapped],
        np.asarray(L[mapped], np.float64).mean(axis=1).tolist(),
        budget=budget,
        L_clipped=centring.clip(L[mapped]),
        clip_threshold_nats=centring.clip_value,
    )
    assert layout.method == "pca" and layout.kept == 0
    assert layout.xy.shape == (7, 2) and layout.budget_keys == ["x/copy"]
    np.testing.assert_array_equal(layout.xy[6], layout.xy[4])
    assert layout.labels[-1] == "x/copy [budget]" and layout.mean_loglik[-1] == "n/a (budget)"
    assert layout.scored_on[0] == f"all {N} texts (embedded)"
    assert layout.frame()["text_set"].to_list() == ["all"] * 6 + ["budget"]
    assert layout.title == "modelmap: 7 models (pca); 1 scored on the text budget, placed"


def test_the_previous_map_keeps_its_models_in_place(synthetic, tmp_path):
    _, families, _, Q = synthetic
    keys = _keys(families)
    first = lay_out_map(Q, keys, families, [0.0] * 12)
    path = tmp_path / "map.parquet"
    write_parquet(first.frame(), path, {"corpus_hash": "h", "method": first.method})
    assert previous_map(path, keys, "other corpus") is None
    previous = previous_map(path, keys, "h")
    np.testing.assert_array_equal(previous[1], np.arange(12))
    again = lay_out_map(Q, keys, families, [0.0] * 12, previous=previous)
    assert again.kept == 12
    spread = np.ptp(first.xy, axis=0).max()
    assert np.median(np.linalg.norm(again.xy - first.xy, axis=1)) < 0.1 * spread


def test_text_budget_from_the_curve_or_fixed(synthetic, tmp_path):
    _, families, _, Q = synthetic
    settings = TextBudgetSettings(target_rel_error=0.2, n_seeds=3, max_queries=12)
    budget = size_text_budget(Q, families, settings)
    n_ls = budget.needed["ls"]
    assert n_ls is not None and len(budget.selection.index) == n_ls
    selected = budget.selected(np.arange(300) * 2)
    assert selected["text_id"].to_list() == (budget.selection.index * 2).tolist()
    fixed = size_text_budget(Q, families, TextBudgetSettings(n_seeds=3, budget_texts=40))
    assert len(fixed.selection.index) == 40
    assert plot_curve_png(budget.summary, 0.2, tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="at least 3"):
        size_text_budget(Q[:2], families[:2], settings)
