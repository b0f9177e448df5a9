"""Leakage evidence against relatives and unseen twins, on synthetic scores (fast tier)."""

import numpy as np
import polars as pl
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.reports.leakage_evidence import (
    LEAK,
    choose_relatives,
    combine,
    gather_evidence,
    robust_z,
    statistics_png,
)
from modelmap.reports.leakage_screen import paper_benchmark, screen_for_leakage

DOMAINS = ["a", "b", "c", "d", "e"]


def synthetic(seed=0, n=500, m=150, leak=0.02, partial=None):
    """Two families of models; per byte log-likelihoods with text difficulty shared by all.

    Planted: fam0/leak gains `leak` nats/byte on every corpus text (or on the first
    `partial` fraction of them) and nothing on the twins; fam0/better gains on both;
    fam1/ft-a gains on domain a in both; fam1/broken is far worse everywhere.
    """
    rng = np.random.default_rng(seed)
    dom_c = np.array([DOMAINS[i % 5] for i in range(n)])
    dom_t = np.array([DOMAINS[i % 5] for i in range(m)])
    bytes_c = rng.integers(300, 1000, n).astype(float)
    bytes_t = rng.integers(300, 1000, m).astype(float)
    diff_c, diff_t = rng.normal(-1.5, 0.3, n), rng.normal(-1.5, 0.3, m)
    keys, rows_c, rows_t, links = [], [], [], []
    for f in range(2):
        fam_c, fam_t = rng.normal(0, 0.05, n), rng.normal(0, 0.05, m)
        names = ["base"] + [f"ft{j}" for j in range(5)]
        for name in names:
            key = f"fam{f}/{name}"
            keys.append(key)
            rows_c.append(diff_c + fam_c + rng.normal(0, 0.005, n))
            rows_t.append(diff_t + fam_t + rng.normal(0, 0.005, m))
            if name != "base":
                links.append((key, f"fam{f}/base"))
    extra = {"fam0/leak": 0, "fam0/better": 0, "fam1/ft-a": 1, "fam1/broken": 1}
    for key, f in extra.items():
        base = keys.index(f"fam{f}/base")
        c = rows_c[base] + rng.normal(0, 0.005, n)
        t = rows_t[base] + rng.normal(0, 0.005, m)
        if key == "fam0/leak":
            seen = np.arange(n) < (n if partial is None else int(partial * n))
            c = c + leak * seen
        elif key == "fam0/better":
            c, t = c + 0.03, t + 0.03
        elif key == "fam1/ft-a":
            c, t = c + 0.08 * (dom_c == "a"), t + 0.08 * (dom_t == "a")
        else:
            c, t = c - 0.5, t - 0.5
        keys.append(key)
        rows_c.append(c)
        rows_t.append(t)
        links.append((key, f"fam{f}/base"))
    Yc, Yt = np.stack(rows_c), np.stack(rows_t)
    return keys, Yc * bytes_c, bytes_c, dom_c, Yt * bytes_t, bytes_t, dom_t, links


def screen(**kw):
    keys, Lc, bc, dc, Lt, bt, dt, links = synthetic(**kw)
    Q = double_centre(Lc)
    relatives, sources = choose_relatives(Q, keys, links)
    ev = gather_evidence(
        keys,
        Lc,
        bc,
        dc,
        relatives,
        twin_loglik=Lt,
        twin_bytes=bt,
        twin_domains=dt,
        relatives_source=sources,
    )
    return keys, combine(None, ev), ev


def test_leak_is_flagged_better_and_domain_finetune_and_broken_are_not():
    keys, table, ev = screen()
    flagged = table.filter(table["flagged"])["model"].to_list()
    assert flagged == ["fam0/leak"]
    row = table.filter(table["model"] == "fam0/leak").row(0, named=True)
    assert row["verdict"] == LEAK and "unseen twins" in row["evidence"]
    better = table.filter(table["model"] == "fam0/better").row(0, named=True)
    assert better["relatives_z"] > 3.5 and abs(better["twin_z"]) < 3.5  # better, not leaked
    assert "better, not leaked" in better["evidence"]
    broken = table.filter(table["model"] == "fam1/broken").row(0, named=True)
    assert broken["relatives_z"] < -3.5 and not broken["flagged"]
    assert set(table["relatives_source"]) == {"lineage"}


def test_a_quarter_leak_is_still_flagged_and_no_twins_falls_back_to_relatives():
    _, table, _ = screen(leak=0.04, partial=0.25)
    assert table.filter(table["flagged"])["model"].to_list() == ["fam0/leak"]
    keys, Lc, bc, dc, *_, links = synthetic()
    relatives, sources = choose_relatives(double_centre(Lc), keys, links)
    no_twins = combine(None, gather_evidence(keys, Lc, bc, dc, relatives))
    flagged = set(no_twins.filter(no_twins["flagged"])["model"])
    assert {"fam0/leak", "fam0/better"} == flagged  # without twins the two look alike
    evidence = no_twins.filter(no_twins["model"] == "fam0/leak")["evidence"][0]
    assert "the only statistic available" in evidence


def test_the_papers_rule_needs_another_statistic_to_flag():
    import polars as pl

    keys, _, ev = screen()
    z = {k: 0.0 for k in keys}
    z.update({"fam1/ft1": 5.0, "fam0/better": 5.0})  # noise, and a model better everywhere
    paper = pl.DataFrame({"model": keys, "robust_z": [z[k] for k in keys], "residual": 0.1})
    table = combine(paper, ev)
    flags = dict(zip(table["model"], table["flagged"], strict=True))
    assert not flags["fam1/ft1"]  # the paper's rule alone
    assert flags["fam0/better"]  # corroborated by its gain against its relatives
    assert flags["fam0/leak"]
    row = table.filter(table["model"] == "fam1/ft1").row(0, named=True)
    assert "not flagged" in row["evidence"] and "paper's rule" in row["evidence"]


def test_relatives_fall_back_to_the_map_without_a_lineage():
    keys, Lc, *_ = synthetic()
    relatives, sources = choose_relatives(double_centre(Lc), keys, [], map_relatives=3)
    assert set(sources) == {"map"} and all(len(r) == 3 for r in relatives)
    fam = [k.split("/")[0] for k in keys]
    assert all(fam[j] == fam[i] for i, rel in enumerate(relatives) for j in rel)


def test_robust_z_ignores_nan_and_png(tmp_path):
    z = robust_z(np.array([0.0, 1.0, 2.0, np.nan, 100.0]))
    assert np.isnan(z[3]) and z[4] > 10
    _, table, _ = screen()
    out = statistics_png(table, tmp_path / "s.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_the_screen_finds_lineages_on_the_map_and_runs_the_papers_rule_with_scores():
    keys, Lc, bc, dc, Lt, bt, dt, links = synthetic()
    Q = double_centre(Lc)
    per_byte = (Lc / bc).mean(axis=1)
    common = dict(
        loglik_per_byte=per_byte,
        declared={a: [b] for a, b in links},
        mean_bytes=float(bc.mean()),
        twin_loglik=Lt,
        twin_bytes=bt,
        twin_domains=dt,
    )
    # Benchmark scores that follow the likelihood, except for the leak's: the paper's rule.
    strength = 50 + 1000 * (per_byte - np.median(per_byte))
    strength[keys.index("fam0/leak")] -= 30
    result = screen_for_leakage(
        keys,
        Q,
        Lc,
        bc,
        dc,
        targets={"ARC": strength, "sparse": np.full(len(keys), np.nan)},
        **common,
    )
    assert result.benchmark == "ARC" and result.paper is not None
    assert "fam0/leak" in result.paper.flagged
    assert result.flagged == ["fam0/leak"]
    assert result.n_twins == Lt.shape[1]
    assert result.table.filter(pl.col("model") == "fam0/leak")["relatives_source"][0] == "lineage"
    assert result.domain_gain().columns == ["model", *DOMAINS]
    np.testing.assert_allclose(result.domain_gain()["a"], result.evidence.domain_gain[:, 0])

    # Too few scores: no paper's rule, the same evidence.
    few = np.full(len(keys), np.nan)
    few[:3] = 50.0
    without = screen_for_leakage(keys, Q, Lc, bc, dc, targets={"ARC": few}, **common)
    assert without.paper is None and without.benchmark is None
    assert without.flagged == ["fam0/leak"] and np.isnan(without.table["paper_z"].to_numpy()).all()


def test_paper_benchmark_prefers_a_suite_mean():
    full, half = np.arange(8.0), np.r_[np.arange(4.0), [np.nan] * 4]
    assert paper_benchmark({"ARC": full, "mean:open_llm_v1": half}) == "mean:open_llm_v1"
    assert paper_benchmark({"ARC": half, "MMLU": full}) == "MMLU"
    assert paper_benchmark({}) is None


@pytest.mark.slow  # a Dagster run (several seconds on two shared cores)
def test_leakage_report_asset_reads_twins_and_lineage(tmp_path):
    """The asset on written files: corpus, twins, likelihood files with twin rows, a map."""

    import dagster as dg
    import polars as pl

    from modelmap.corpus.build import corpus_hash
    from modelmap.likelihoods import SPLIT_TWIN, likelihood_frame
    from modelmap_assets.geometry.coordinates import coordinates
    from modelmap_assets.reports.leakage import leakage_report
    from resources.mlflow import MlflowResource
    from resources.storage import StorageResource

    keys, Lc, bc, dc, Lt, bt, dt, links = synthetic()
    storage = StorageResource(base_dir=str(tmp_path / "data"))

    def table(n_bytes, domains):
        return pl.DataFrame(
            {
                "text_id": range(len(n_bytes)),
                "text": [f"text {i}" for i in range(len(n_bytes))],
                "domain": list(domains),
                "n_bytes": n_bytes.astype(int),
            }
        )

    corpus, twins = table(bc, dc), table(bt, dt)
    digest, twins_digest = corpus_hash(corpus), "t" + corpus_hash(twins)
    storage.write_corpus(corpus, {"corpus_hash": digest, "mean_bytes": float(bc.mean())})
    storage.write_twins(twins, {"twins_hash": twins_digest, "corpus_hash": digest, "n_twins": 150})
    bases = dict(links)
    for i, key in enumerate(keys):
        frames = [likelihood_frame(corpus["text_id"], Lc[i])]
        meta = {"corpus_hash": digest, "base_models": [bases[key]] if key in bases else []}
        if key != "fam1/ft2":  # one model scored without twins
            frames.append(likelihood_frame(twins["text_id"], Lt[i], split=SPLIT_TWIN))
            meta["twins_hash"] = twins_digest
        storage.write_likelihood(key, pl.concat(frames), meta)

    # The real `coordinates` gathers L, the twin matrix and the neighbour graph from the files.
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("models", list(keys))
        result = dg.materialize(
            [coordinates, leakage_report],
            instance=instance,
            resources={"storage": storage, "mlflow": MlflowResource(mode="off")},
        )
    assert result.success
    meta = result.asset_materializations_for_node("leakage_report")[0].metadata
    assert meta["flagged"].value == ["fam0/leak"]
    assert meta["n_twins"].value == 150 and meta["flagged_by_paper_rule"].value == []
    screen = pl.read_parquet(tmp_path / "data" / "leakage_report" / "screen.parquet")
    no_twins = screen.filter(pl.col("model") == "fam1/ft2").row(0, named=True)
    assert np.isnan(no_twins["twin_gap"]) and not no_twins["flagged"]
    sources = dict(zip(screen["model"], screen["relatives_source"], strict=True))
    assert sources["fam0/leak"] == "lineage"
    assert (tmp_path / "data" / "leakage_report" / "statistics.png").exists()


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5, 25])
def test_the_fast_median_over_relatives_is_nanmedian(r):
    """The stacked, sorted median of `_gain` against numpy's nanmedian, NaN included."""
    import warnings

    from modelmap.reports.leakage_evidence import _gain, _median_over_relatives

    rng = np.random.default_rng(r)
    x = rng.standard_normal((7, r, 60))
    x[rng.random(x.shape) < 0.3] = np.nan
    with warnings.catch_warnings():  # all-NaN columns: numpy warns, the fast path is quiet
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(x, axis=1)
        Y = rng.standard_normal((30, 40))
        relatives = [np.array([(i + j + 1) % 30 for j in range(r)]) for i in range(30)]
        slow = np.stack([Y[i] - np.nanmedian(Y[rel], axis=0) for i, rel in enumerate(relatives)])
    np.testing.assert_array_equal(_median_over_relatives(x), expected)
    np.testing.assert_allclose(_gain(Y, relatives, block_values=100), slow, rtol=0, atol=1e-12)
