"""Lineage check on a synthetic map with a known genealogy (fast tier)."""

import numpy as np
import pytest

from modelmap.geometry.centering import double_centre
from modelmap.reports.lineage import (
    BASE_NOT_SCORED,
    CONFIRMED,
    DECLARED_BASE_FAR,
    NO_DECLARATION,
    UNDECLARED_RELATIVE,
    check_lineage,
    lineage_png,
    measured_band,
)

MEAN_BYTES = 1000.0


def synthetic_map(seed: int = 0, n_texts: int = 400):
    """Three families: a base far from the others, three fine-tunes close to their base."""
    rng = np.random.default_rng(seed)
    keys, rows, declared = [], [], {}
    for fam in ("a", "b", "c"):
        base = rng.normal(scale=3.0, size=n_texts)
        keys.append(f"{fam}/base")
        rows.append(base)
        for n in range(3):
            key = f"{fam}/ft{n}"
            keys.append(key)
            rows.append(base + rng.normal(scale=0.3, size=n_texts))
            declared[key] = [f"{fam}/base"]
    L = np.stack(rows) - 300.0
    return double_centre(L), keys, declared


def test_correct_declarations_are_confirmed_and_nothing_is_flagged():
    Q, keys, declared = synthetic_map()
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    assert rep.flagged == []
    verdicts = dict(zip(rep.table["model"], rep.table["verdict"], strict=True))
    assert {verdicts[k] for k in declared} == {CONFIRMED}
    assert {verdicts[f"{f}/base"] for f in "abc"} == {NO_DECLARATION}
    assert rep.band_source == "measured"
    ft = rep.table.filter(rep.table["model"] == "a/ft0").row(0, named=True)
    assert ft["declared_base_rank"] == 1


def test_wrong_and_missing_declarations_are_the_only_flags():
    Q, keys, declared = synthetic_map()
    declared = {**declared, "a/ft0": ["b/base"]}  # wrong
    del declared["c/ft2"]  # missing
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    assert sorted(rep.flagged) == ["a/ft0", "c/ft2"]
    verdicts = dict(zip(rep.table["model"], rep.table["verdict"], strict=True))
    assert verdicts["a/ft0"] == DECLARED_BASE_FAR
    assert verdicts["c/ft2"] == UNDECLARED_RELATIVE
    row = rep.table.filter(rep.table["model"] == "a/ft0").row(0, named=True)
    assert row["suggested_base"] == "a/base"
    assert "b/base" in rep.texts["a/ft0"] and "a/base" in rep.texts["a/ft0"]
    assert "c/base" in rep.texts["c/ft2"]


def test_findings_and_verdict_counts():
    Q, keys, declared = synthetic_map()
    assert check_lineage(Q, keys, declared, MEAN_BYTES).findings() == "No model flagged."
    declared = {**declared, "a/ft0": ["b/base"]}
    del declared["c/ft2"]
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    paragraphs = rep.findings().split("\n\n")
    assert paragraphs == [
        f"a/ft0: {DECLARED_BASE_FAR}. {rep.texts['a/ft0']}",
        f"c/ft2: {UNDECLARED_RELATIVE}. {rep.texts['c/ft2']}",
    ]
    counts = rep.verdict_counts()
    assert list(counts) == sorted(counts)
    assert counts == {
        CONFIRMED: 7,
        DECLARED_BASE_FAR: 1,
        NO_DECLARATION: 3,
        UNDECLARED_RELATIVE: 1,
    }


def test_a_base_not_on_the_map_is_reported_not_raised():
    Q, keys, declared = synthetic_map()
    declared = {**declared, "a/base": ["elsewhere/not-scored"]}
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    row = rep.table.filter(rep.table["model"] == "a/base").row(0, named=True)
    assert row["verdict"] == BASE_NOT_SCORED and not row["flagged"]
    assert rep.flagged == []
    missing = rep.pairs.filter(~rep.pairs["on_map"])
    assert missing["declared_base"].to_list() == ["elsewhere/not-scored"]


def test_configured_band_and_interval_seam():
    Q, keys, declared = synthetic_map()

    def interval(Q, a, b):
        est = np.array([np.sum((Q[i] - Q[j]) ** 2) / Q.shape[1] for i, j in zip(a, b, strict=True)])
        return 0.9 * est, 1.1 * est

    rep = check_lineage(Q, keys, declared, MEAN_BYTES, band_bits_per_byte=1.0, interval=interval)
    assert rep.band_source == "configured" and rep.band_bits_per_byte == 1.0
    row = rep.table.filter(rep.table["model"] == "b/ft1").row(0, named=True)
    assert row["two_kl_nats_low"] == pytest.approx(0.9 * row["two_kl_nats"])
    assert row["two_kl_bits_per_byte_high"] == pytest.approx(1.1 * row["two_kl_bits_per_byte"])


def test_default_interval_holds_the_estimate():
    Q, keys, declared = synthetic_map()
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    ft = rep.pairs
    assert (ft["two_kl_nats_low"] < ft["two_kl_nats"]).all()
    assert (ft["two_kl_nats"] < ft["two_kl_nats_high"]).all()
    assert (ft["two_kl_bits_per_byte_low"] > 0).all()


def test_measured_band_lies_between_fine_tunes_and_families():
    Q, keys, declared = synthetic_map()
    band = measured_band(Q, keys, declared, MEAN_BYTES)
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    ft = rep.pairs["two_kl_bits_per_byte"].max()
    assert ft < band
    # below every distance between families
    two_kl = (Q[:, None, :] - Q[None, :, :]) ** 2
    bpb = two_kl.mean(axis=2) / (MEAN_BYTES * np.log(2))
    fam = np.array([k[0] for k in keys])
    assert band < bpb[fam[:, None] != fam[None, :]].min()


def test_far_groups_do_not_widen_the_band_over_two_near_families():
    """Two families whose bases are three fine-tunes apart, among four far families (the demo's
    map: a zoo of tiny models, a zoo of small ones, a pretrained family). Most pairs between
    lineages are far, so the middle of the gap to them would take in the two near bases."""
    rng = np.random.default_rng(1)
    n_texts, keys, rows, declared = 400, [], [], {}
    near_a = rng.normal(scale=3.0, size=n_texts)
    bases = {
        "a": near_a,
        "b": near_a + rng.normal(scale=0.52, size=n_texts),  # 2KL ~3x a fine-tune's
        **{f: rng.normal(scale=3.0, size=n_texts) for f in ("c", "d", "e", "f")},
    }
    for fam, base in bases.items():
        keys.append(f"{fam}/base")
        rows.append(base)
        for n in range(3):
            keys.append(f"{fam}/ft{n}")
            rows.append(base + rng.normal(scale=0.3, size=n_texts))
            declared[f"{fam}/ft{n}"] = [f"{fam}/base"]
    Q = double_centre(np.stack(rows) - 300.0)
    rep = check_lineage(Q, keys, declared, MEAN_BYTES)
    assert rep.flagged == []
    two_kl = ((Q[:, None, :] - Q[None, :, :]) ** 2).mean(axis=2) / (MEAN_BYTES * np.log(2))
    fam = np.array([k[0] for k in keys])
    a_to_b = two_kl[np.ix_(fam == "a", fam == "b")].min()
    assert rep.pairs["two_kl_bits_per_byte"].max() < rep.band_bits_per_byte < a_to_b


def test_lineage_png(tmp_path):
    Q, keys, declared = synthetic_map()
    rep = check_lineage(Q, keys, {**declared, "a/ft0": ["b/base"]}, MEAN_BYTES)
    out = lineage_png(rep, tmp_path / "lineage.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # a Dagster run (several seconds on two shared cores)
def test_lineage_report_asset_on_a_written_map(tmp_path):
    """The asset reads `coordinates` (declared bases in its model index) and writes its files."""
    import json

    import dagster as dg
    import polars as pl

    from modelmap_assets.reports.lineage import lineage_report
    from resources.mlflow import MlflowResource
    from resources.storage import StorageResource

    Q, keys, declared = synthetic_map()
    declared = {**declared, "a/ft0": ["b/base"], "a/base": ["gone/model"]}
    storage = StorageResource(base_dir=str(tmp_path / "data"))
    folder = storage.new_version_dir("coordinates")
    np.save(folder / "Q.npy", Q.astype(np.float32))
    pl.DataFrame(
        {
            "row": range(len(keys)),
            "key": keys,
            "family": [k.split("/")[0] for k in keys],
            "base_models": [",".join(declared.get(k, [])) for k in keys],
            "mean_loglik_nats": [0.0] * len(keys),
        }
    ).write_parquet(folder / "models.parquet")
    info = {"corpus_hash": "abc", "K": len(keys), "N": Q.shape[1], "mean_bytes": MEAN_BYTES}
    (folder / "info.json").write_text(json.dumps(info))
    storage.publish_version("coordinates", folder)
    result = dg.materialize(
        [lineage_report],
        resources={"storage": storage, "mlflow": MlflowResource(mode="off")},
    )
    assert result.success
    meta = result.asset_materializations_for_node("lineage_report")[0].metadata
    assert meta["flagged"].value == ["a/ft0"]
    assert meta["verdicts"].value[BASE_NOT_SCORED] == 1
    assert "b/base" in meta["findings"].value
    out = tmp_path / "data" / "lineage_report"
    assert {"lineage.parquet", "declared_pairs.parquet", "lineage.png", "findings.txt"} <= {
        p.name for p in out.iterdir()
    }


def test_flagged_models_are_logged_at_most_twenty_lines():
    from modelmap_assets.reports.shared import MAX_LOGGED_FINDINGS, log_some

    class Log:
        lines: list[str] = []

        def warning(self, line):
            self.lines.append(line)

    log = Log()
    log_some(log, [f"m{i}" for i in range(5000)], "findings.txt")
    assert len(log.lines) == MAX_LOGGED_FINDINGS + 1
    assert log.lines[-1] == f"... and {5000 - MAX_LOGGED_FINDINGS} more flagged: see findings.txt"


@pytest.mark.slow  # draws two figures (~12 s on two shared cores)
def test_per_model_figures_stay_drawable_at_hub_scale(tmp_path):
    """One row per model made a 10,000-model figure ~300,000 pixels tall (matplotlib refuses
    more than 65,536): the figures show at most MAX_PLOTTED_MODELS rows."""
    import numpy as np
    import polars as pl
    from PIL import Image

    from modelmap.reports import leakage_evidence, lineage

    K = 200
    rng = np.random.default_rng(0)
    keys = [f"org{i // 10}/m{i}" for i in range(K)]
    declared = {k: [f"org{i // 10}/m{i - i % 10}"] for i, k in enumerate(keys) if i % 10}
    report = lineage.check_lineage(rng.normal(size=(K, 50)), keys, declared, 900.0)
    png = lineage.lineage_png(report, tmp_path / "lineage.png")
    assert Image.open(png).size[1] < 3000  # was ~6,300 pixels at K = 200
    combined = pl.DataFrame(
        {
            "model": keys,
            "flagged": [i == 7 for i in range(K)],
            **{c: rng.normal(size=K) for c, _ in leakage_evidence.STATISTICS},
        }
    )
    png = leakage_evidence.statistics_png(combined, tmp_path / "statistics.png")
    assert Image.open(png).size[1] < 3000  # was ~6,300 pixels at K = 200
