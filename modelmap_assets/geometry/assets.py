"""Assets over all models: `coordinates` (L and Q), `kl_table` and `model_map`."""

import json
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.intervals import (
    bootstrap_interval,
    neighbour_intervals,
    normal_interval,
    two_kl_standard_errors,
    with_interval_columns,
    z_value,
)
from modelmap.geometry.kl import (
    NeighbourGraph,
    nats_per_text_to_bits_per_byte,
    nearest,
    neighbour_table,
    pair_table,
    two_kl_nats,
)
from modelmap.geometry.mapping import (
    MIN_MODELS_FOR_TSNE,
    embed_2d,
    embed_stable,
    plot_map_png,
    write_map_html,
)
from modelmap.geometry.placement import Centring
from modelmap.geometry.regime import mark_kl_regime, scale_bands_html
from modelmap.geometry.textbudget import (
    partial_row_distances,
    place_from_neighbours,
    weighted_bootstrap_two_kl,
)
from modelmap.likelihoods import (
    SPLIT_CORPUS,
    SPLIT_TWIN,
    TEXT_SET_ALL,
    TEXT_SET_BUDGET,
    corpus_rows,
    is_full,
    read_scores,
)
from modelmap.likelihoods import read_metadata as read_likelihood_metadata
from modelmap.selections import read_selection
from modelmap.storage import read_parquet_metadata, write_parquet
from modelmap_assets.automation.conditions import (
    DEFAULT_SCHEDULE,
    coordinates_condition,
    eager_refresh,
)
from modelmap_assets.metadata import png_md
from modelmap_assets.partitions import models_partitions
from modelmap_assets.runs import others_in_progress
from modelmap_assets.scoring.assets import likelihood
from resources.mlflow import MlflowResource
from resources.storage import StorageResource

# Refresh after upstream updates, but never wait for a model that failed or is missing:
# the map is built from whatever has been scored. `coordinates` itself refreshes at most
# hourly by default (`modelmap_assets.automation.conditions`; the code location applies the
# setting).
refresh = eager_refresh


class CoordinatesConfig(dg.Config):
    clip_percentile: float | None = Field(
        default=2.0, description="global clipping percentile of L (paper: 2); null: none"
    )


def _load_models(
    storage: StorageResource, keys: list[str], corpus_hash: str
) -> tuple[list[dict], list[str], list[str]]:
    """Metadata of the models scored on this corpus (with ``path``, their file); a reason for
    each one left out; the keys of those scored on a text budget (placed by `kl_table` and
    `model_map`)."""
    kept, left_out, budget = [], [], []
    scored = set(storage.likelihood_keys())
    paths = storage.model_files("likelihood", [k for k in keys if k in scored])
    for key in keys:
        if key not in scored:
            left_out.append(f"{key}: not scored (failed or not yet run)")
            continue
        meta = {**read_likelihood_metadata(paths[key]), "key": key, "path": paths[key]}
        if meta.get("corpus_hash") != corpus_hash:
            left_out.append(
                f"{key}: scored on another corpus ({meta.get('corpus_hash', '?')[:12]})"
            )
            continue
        if not is_full(meta):
            left_out.append(f"{key}: scored on a text budget, not on every corpus text")
            budget.append(key)
            continue
        kept.append(meta)
    return kept, left_out, budget


CENTRED = "rows_and_columns_centred"
#: The fitted clip value and column means, next to Q in each `coordinates` version.
CENTRING_FILE = "centring.npz"
#: Every model's nearest models on Q (`kl.NeighbourGraph`), next to Q in each version.
GRAPH_FILE = "neighbours.npz"
#: Log-likelihoods of the held-out twin texts (K x M, NaN rows for models scored without
#: them), next to L: never part of L or Q; read by `leakage_report`.
TWINS_FILE = "T_twins.npy"
#: Model files read per query while building L (polars reads the files of one query in
#: parallel: 4.4 s for 10,000 files of 10,000 rows, against 12 s one file at a time).
READ_CHUNK = 500


def _chunk_rows(models: list[dict]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(corpus text ids, log-likelihoods, twin text ids, log-likelihoods) of each model, from
    one polars query over their files. A file's rows are sorted by (split, text_id), corpus
    first, and its metadata counts each split, so the query's rows are cut by those counts;
    any file the cut does not fit is read alone by the caller (`read_scores`)."""
    frame = pl.scan_parquet([m["path"] for m in models]).select("text_id", "loglik").collect()
    ids, values = frame["text_id"].to_numpy(), frame["loglik"].to_numpy()
    out, offset = [], 0
    for meta in models:
        n_corpus, n_twin = int(meta["n_corpus_rows"]), int(meta.get("n_twin_rows", 0))
        corpus, twin = (
            slice(offset, offset + n_corpus),
            slice(offset + n_corpus, offset + n_corpus + n_twin),
        )
        out.append((ids[corpus], values[corpus], ids[twin], values[twin]))
        offset += n_corpus + n_twin
    if offset != len(ids):
        raise ValueError(f"{len(ids)} rows, but the files' metadata counts {offset}")
    return out


def _read_rows(
    models: list[dict],
    text_ids: np.ndarray,
    L: np.ndarray,
    twins: tuple[np.ndarray, str] | None,
    T: np.ndarray | None,
) -> int:
    """Fill L (and T) from each model's file; the number of models whose twin rows were
    found. A file whose corpus texts differ from the corpus fails the step by name."""
    with_twins = 0
    for start in range(0, len(models), READ_CHUNK):
        chunk = models[start : start + READ_CHUNK]
        fast = None
        if all("n_corpus_rows" in m for m in chunk):
            try:
                fast = _chunk_rows(chunk)
            except (pl.exceptions.PolarsError, ValueError):
                fast = None  # another schema (an older file): one file at a time
        for row, meta in enumerate(chunk, start=start):
            ids, loglik, twin_ids, twin_loglik = fast[row - start] if fast else (None,) * 4
            if fast is None or not np.array_equal(ids, text_ids):
                scores = read_scores(meta["path"])  # the exact reader (sorts, any layout)
                (ids, loglik), (twin_ids, twin_loglik) = (
                    scores.rows(SPLIT_CORPUS),
                    scores.rows(SPLIT_TWIN),
                )
            if not np.array_equal(ids, text_ids):
                raise dg.Failure(
                    description=f"model {meta['key']}: its text ids differ from the corpus"
                )
            L[row] = loglik
            if twins is None or meta.get("twins_hash") != twins[1]:
                continue
            if np.array_equal(twin_ids, twins[0]):
                T[row] = twin_loglik
                with_twins += 1
    return with_twins


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


@dg.asset(
    deps=[dg.AssetDep(likelihood, partition_mapping=dg.AllPartitionMapping())],
    automation_condition=coordinates_condition(DEFAULT_SCHEDULE),
    kinds={"numpy"},
    group_name="modelmap",
    check_specs=[dg.AssetCheckSpec(CENTRED, asset="coordinates", blocking=True)],
)
def coordinates(
    context: dg.AssetExecutionContext, config: CoordinatesConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The K x N log-likelihood matrix L of every scored model, clipped, and double-centred Q.

    Files (float32 .npy, memory-mappable): `L_raw.npy`, `L_clipped.npy`, `Q.npy`, the model
    index `models.parquet` (row, key, family, revision, ...) and the fitted centring
    `centring.npz` (clip value, column means: what places a new model), in a versioned folder.
    """
    corpus_df, corpus_meta = storage.read_corpus()
    corpus_hash = corpus_meta["corpus_hash"]
    text_ids = corpus_df["text_id"].to_numpy()
    keys = sorted(context.instance.get_dynamic_partitions(models_partitions.name))
    models, left_out, budget_keys = _load_models(storage, keys, corpus_hash)
    for reason in left_out:
        context.log.warning(f"left out of the map: {reason}")
    if not models:
        raise dg.Failure(description="no model has been scored on the current corpus yet")

    K, N = len(models), len(text_ids)
    out = storage.new_version_dir("coordinates", others_in_progress(context))
    L = np.lib.format.open_memmap(out / "L_raw.npy", mode="w+", dtype=np.float32, shape=(K, N))
    twin_table = storage.read_twins(corpus_hash)
    twins, T = None, None
    if twin_table is not None:
        twin_ids = twin_table[0]["text_id"].to_numpy().astype(np.int64)
        twins = (twin_ids, twin_table[1]["twins_hash"])
        T = np.lib.format.open_memmap(out / TWINS_FILE, "w+", np.float32, (K, len(twin_ids)))
        T[:] = np.nan
    with_twins = _read_rows(models, text_ids, L, twins, T)
    L.flush()
    if T is not None:
        T.flush()
        del T
    # Clip value (exact, streamed) and column means: no copy of L in memory. Saved with Q so
    # that a model scored later is placed with the same frozen values.
    centring = Centring(percentile=config.clip_percentile or None).fit(L)
    centring.save(out / CENTRING_FILE)
    threshold = centring.clip_value
    clipped = np.lib.format.open_memmap(out / "L_clipped.npy", "w+", np.float32, (K, N))
    Q = np.lib.format.open_memmap(out / "Q.npy", mode="w+", dtype=np.float32, shape=(K, N))
    centring.transform_into(L, Q, clipped)
    clipped.flush()
    Q.flush()
    del clipped
    # The nearest models of every model, once: the KL table, the map and the reports read
    # their first columns (each had made its own pass over all K^2 pairs).
    NeighbourGraph.of(Q).save(out / GRAPH_FILE)
    index = pl.DataFrame(
        {
            "row": np.arange(K),
            "key": [m["key"] for m in models],
            "family": [m.get("family") or m["key"].split("/")[0] for m in models],
            # Declared base models (card data or zoo registry), comma-separated; "" for none.
            "base_models": [",".join(m.get("base_models") or []) for m in models],
            "revision": [m.get("revision") for m in models],
            "mean_loglik_nats": _row_means(L),
            "n_params": [m.get("n_params") for m in models],
            "dtype": [m.get("dtype") for m in models],
        }
    )
    info = {
        "corpus_hash": corpus_hash,
        "K": K,
        "N": N,
        "mean_bytes": corpus_meta["mean_bytes"],
        "clip_percentile": config.clip_percentile,
        "clip_threshold_nats": float(threshold),
        "left_out": left_out,
        "budget_models": budget_keys,
        "twins_hash": twins[1] if twins else None,
        "models_with_twins": with_twins,
    }
    write_parquet(index, out / "models.parquet", info)
    (out / "info.json").write_text(json.dumps(info, indent=2))
    check = centring_check(Q)
    final = storage.publish_version("coordinates", out)
    return dg.MaterializeResult(
        check_results=[check],
        metadata={
            "K": K,
            "N": N,
            "corpus_hash": corpus_hash,
            "clip_threshold_nats": float(threshold),
            "left_out": dg.MetadataValue.json(left_out),
            "path": dg.MetadataValue.path(str(final)),
        },
    )


def _row_means(L: np.ndarray, block_rows: int = 2048) -> np.ndarray:
    """Mean of each row (float64), one block of rows at a time."""
    return np.concatenate(
        [
            np.asarray(L[s : s + block_rows], dtype=np.float64).mean(axis=1)
            for s in range(0, len(L), block_rows)
        ]
    )


def read_graph(storage: StorageResource) -> NeighbourGraph | None:
    """The nearest models on the current Q (None for a version written before the graph)."""
    path = storage.current_version_dir("coordinates") / GRAPH_FILE
    return NeighbourGraph.load(path) if path.exists() else None


def read_coordinates(storage: StorageResource) -> tuple[pl.DataFrame, np.ndarray, dict]:
    """(model index, Q memory-mapped, info) of the current `coordinates` output."""
    folder = storage.current_version_dir("coordinates")
    info = json.loads((folder / "info.json").read_text())
    return (
        pl.read_parquet(folder / "models.parquet"),
        np.load(folder / "Q.npy", mmap_mode="r"),
        info,
    )


#: 2KL estimates above this many bits per byte are outside the KL regime (README, "Where the
#: KL estimate holds"): reported as a map distance, not as a divergence. On the zoo the
#: estimate stayed within a factor 3 of the sampled KL up to 7e-4 bits/byte (bfloat16, weight
#: noise up to 10%) and exceeded it 13-143 times from 0.017 bits/byte on (fine-tunes, bases).
KL_REGIME_MAX_BITS_PER_BYTE = 1e-3


class KLTableConfig(dg.Config):
    neighbours: int = Field(default=5, description="nearest neighbours kept per model")
    max_pair_models: int = Field(
        default=2000, description="the table of every pair is written while K is at most this"
    )
    interval_level: float = Field(
        default=0.95, description="two-sided confidence level of the intervals over texts"
    )
    bootstrap_resamples: int = Field(
        default=200,
        description="B: bootstrap resamples of the texts for the neighbours' intervals and "
        "the paired nearest-vs-second test (the pairs table uses the closed-form SE)",
    )
    kl_regime_max_bits_per_byte: float = Field(
        default=KL_REGIME_MAX_BITS_PER_BYTE,
        description="estimates above this are outside the KL regime: bits/byte columns null, "
        "`in_kl_regime` false, `two_kl_nats` kept as a squared map distance",
    )


def budget_rows(
    context: dg.AssetExecutionContext, storage: StorageResource, info: dict, text_ids: np.ndarray
) -> list[dict]:
    """The models scored on a text budget of the current corpus: key, family, their partial
    row in selection order, the selection's rows and the column of each selected text.

    Only the files `coordinates` found to be budget files (``info["budget_models"]``) are
    read, so a refresh at K = 100,000 does not read every file's metadata again."""
    keys = set(context.instance.get_dynamic_partitions(models_partitions.name))
    column = {int(t): i for i, t in enumerate(text_ids)}
    rows = []
    for key in info.get("budget_models", []):
        if key not in keys:
            continue
        path = storage.likelihood_path(key)
        meta = read_likelihood_metadata(path)
        if is_full(meta) or meta.get("corpus_hash") != info["corpus_hash"]:
            continue
        try:
            selection, _ = read_selection(storage.root, meta.get("selection_hash"))
        except FileNotFoundError as exc:
            context.log.warning(f"{key}: scored on a text budget, but {exc}; left out")
            continue
        scores = corpus_rows(path)
        if scores["text_id"].to_list() != selection["text_id"].to_list():
            context.log.warning(f"{key}: its texts differ from its selection's; left out")
            continue
        rows.append(
            {
                "key": key,
                "family": meta.get("family") or key.split("/")[0],
                "loglik": scores["loglik"].to_numpy(),
                "selection": selection,
                "selection_hash": meta["selection_hash"],
                "columns": np.array([column[int(t)] for t in selection["text_id"]]),
            }
        )
    return rows


def _budget_tables(
    budget: list[dict],
    L_clipped: np.ndarray,
    keys: list[str],
    info: dict,
    config: KLTableConfig,
) -> tuple[list[pl.DataFrame], list[pl.DataFrame]]:
    """Neighbour and pair rows of each budget model against every full model (weighted
    distances over its selected texts, weighted bootstrap intervals)."""
    N, mean_bytes = info["N"], info["mean_bytes"]
    k = min(config.neighbours, len(keys))
    nbr, prs = [], []
    rng = np.random.default_rng(0)
    for b in budget:
        full = np.asarray(L_clipped[:, b["columns"]], dtype=np.float64)
        weight = b["selection"]["weight"].to_numpy()
        est = (
            partial_row_distances(
                b["loglik"], L_clipped, b["columns"], weight, info["clip_threshold_nats"]
            )
            / N
        )
        samples = weighted_bootstrap_two_kl(
            b["loglik"],
            full,
            b["selection"]["count"].to_numpy(),
            b["selection"]["probability"].to_numpy(),
            info["clip_threshold_nats"],
            N,
            config.bootstrap_resamples,
            rng,
        )
        low, high = bootstrap_interval(est, samples, config.interval_level)
        order = np.argsort(est, kind="stable")[:k]
        gap_low = gap_high = float("nan")
        if k >= 2:
            gap = est[order[1]] - est[order[0]]
            sd = float(np.std(samples[:, order[1]] - samples[:, order[0]], ddof=1))
            z = z_value(config.interval_level)
            gap_low, gap_high = gap - z * sd, gap + z * sd
        table = pl.DataFrame(
            {
                "model": [b["key"]] * k,
                "rank": np.arange(1, k + 1, dtype=np.int64),
                "neighbour": [keys[j] for j in order],
                "two_kl_nats": est[order],
                "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(est[order], mean_bytes),
            }
        )
        nbr.append(
            _with_gap(
                with_interval_columns(table, low[order], high[order], mean_bytes),
                np.array([gap_low]),
                np.array([gap_high]),
            ).with_columns(pl.lit(TEXT_SET_BUDGET).alias("text_set"))
        )
        pair = pl.DataFrame(
            {
                "model_a": [b["key"]] * len(keys),
                "model_b": keys,
                "two_kl_nats": est,
                "two_kl_bits_per_byte": nats_per_text_to_bits_per_byte(est, mean_bytes),
            }
        )
        prs.append(
            with_interval_columns(pair, low, high, mean_bytes).with_columns(
                pl.lit(TEXT_SET_BUDGET).alias("text_set")
            )
        )
    return nbr, prs


def _with_gap(table: pl.DataFrame, gap_low: np.ndarray, gap_high: np.ndarray) -> pl.DataFrame:
    """Columns of the paired test on each model's rank-1 row (null on the others):
    ``second_minus_nearest_nats_low/_high`` and ``distinguishable`` (the interval excludes 0)."""
    first = pl.col("rank") == 1
    models = table.select("model").unique(maintain_order=True)
    if models.height != len(gap_low):  # K = 1: no neighbours, nothing to compare
        gap_low = gap_high = np.full(models.height, np.nan)
    per_model = models.with_columns(
        pl.Series("_gap_low", gap_low, dtype=pl.Float64),
        pl.Series("_gap_high", gap_high, dtype=pl.Float64),
    )
    table = table.join(per_model, on="model", how="left", maintain_order="left")
    return table.with_columns(
        pl.when(first).then(pl.col("_gap_low")).alias("second_minus_nearest_nats_low"),
        pl.when(first).then(pl.col("_gap_high")).alias("second_minus_nearest_nats_high"),
        pl.when(first & pl.col("_gap_low").is_not_nan())
        .then(pl.col("_gap_low") > 0)
        .alias("distinguishable"),
    ).drop("_gap_low", "_gap_high")


@dg.asset(deps=[coordinates], automation_condition=refresh, kinds={"polars"}, group_name="modelmap")
def kl_table(
    context: dg.AssetExecutionContext,
    config: KLTableConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """Estimated 2 KL between models, ||q_i - q_j||^2 / N, in nats per text and bits per byte,
    each with a confidence interval over texts, marked outside the KL regime past
    `kl_regime_max_bits_per_byte`.

    `neighbours.parquet` always (each model's nearest models, the paired test of its first
    two, models scored on a text budget placed by weighted distances); `pairs.parquet` while
    K is small.
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    K = len(keys)
    mean_bytes, level = info["mean_bytes"], config.interval_level
    idx, nn = nearest(Q, config.neighbours, read_graph(storage))
    neighbours = neighbour_table(idx, nn, keys, mean_bytes)
    iv = neighbour_intervals(Q, idx, config.bootstrap_resamples, level)
    neighbours = _with_gap(
        with_interval_columns(neighbours, iv["low"], iv["high"], mean_bytes),
        iv["gap_low"],
        iv["gap_high"],
    ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))
    corpus_df, _ = storage.read_corpus()
    budget = budget_rows(context, storage, info, corpus_df["text_id"].to_numpy())
    budget_nbr, budget_pairs = [], []
    if budget:
        L_clipped = np.load(
            storage.current_version_dir("coordinates") / "L_clipped.npy", mmap_mode="r"
        )
        budget_nbr, budget_pairs = _budget_tables(budget, L_clipped, keys, info, config)
    regime = config.kl_regime_max_bits_per_byte
    neighbours = mark_kl_regime(pl.concat([neighbours, *budget_nbr]), regime)
    out = storage.asset_dir("kl_table")
    table_meta = {
        "corpus_hash": info["corpus_hash"],
        "interval_level": level,
        "interval_method_neighbours": "closed-form standard error, log scale",
        "distinguishable_method": f"paired bootstrap, B={config.bootstrap_resamples}",
        "interval_method_pairs": "closed-form standard error, log scale",
        "interval_method_budget_rows": "weighted bootstrap SE, log scale",
        "kl_regime_max_bits_per_byte": regime,
        "budget_models": [b["key"] for b in budget],
    }
    write_parquet(neighbours, out / "neighbours.parquet", table_meta)
    n_outside = int((~neighbours["in_kl_regime"]).sum())
    metadata: dict = {
        "K": K,
        "corpus_hash": info["corpus_hash"],
        "interval_level": level,
        "bootstrap_resamples": config.bootstrap_resamples,
        "kl_regime_max_bits_per_byte": regime,
        "neighbours_outside_kl_regime": n_outside,
        "budget_models": dg.MetadataValue.json([b["key"] for b in budget]),
        "nearest_distinguishable_fraction": float(
            neighbours.filter(pl.col("rank") == 1)["distinguishable"].mean() or 0.0
        ),
    }
    if K <= config.max_pair_models:
        Q_all = np.asarray(Q)
        D = two_kl_nats(Q_all)
        low, high = normal_interval(D, two_kl_standard_errors(Q_all), level)
        a, b = np.triu_indices(K, k=1)
        pairs = with_interval_columns(
            pair_table(D, keys, mean_bytes), low[a, b], high[a, b], mean_bytes
        ).with_columns(pl.lit(TEXT_SET_ALL).alias("text_set"))
        pairs = mark_kl_regime(pl.concat([pairs, *budget_pairs]), regime)
        write_parquet(pairs, out / "pairs.parquet", table_meta)
        if pairs.height:
            nats = pairs["two_kl_nats"]
            inside = pairs.filter(pl.col("in_kl_regime"))["two_kl_bits_per_byte"]
            metadata.update(
                {
                    "pairs_outside_kl_regime": int((~pairs["in_kl_regime"]).sum()),
                    "two_kl_nats_median": float(nats.median()),
                    "two_kl_nats_max": float(nats.max()),
                }
            )
            if inside.len():
                metadata.update(
                    {
                        "two_kl_bits_per_byte_median": float(inside.median()),
                        "two_kl_bits_per_byte_min": float(inside.min()),
                        "two_kl_bits_per_byte_max": float(inside.max()),
                    }
                )
    else:
        # A table of an earlier, smaller K is not this one: never leave it to be read or logged.
        stale = out / "pairs.parquet"
        if stale.exists():
            stale.unlink()
            context.log.info(
                f"pairs.parquet removed: K={K} is over max_pair_models={config.max_pair_models}"
            )
        metadata["pairs"] = f"not written: K={K} > max_pair_models={config.max_pair_models}"
    metadata["nearest_neighbours"] = dg.MetadataValue.md(_nearest_md(neighbours, level))
    metadata["path"] = dg.MetadataValue.path(str(out))
    mlflow.log_run(
        "kl_table",
        params={
            "K": K,
            "corpus_hash": info["corpus_hash"],
            "neighbours": config.neighbours,
            "interval_level": level,
            "bootstrap_resamples": config.bootstrap_resamples,
            "kl_regime_max_bits_per_byte": regime,
            "budget_models": ",".join(b["key"] for b in budget)[:500],
        },
        metrics={
            k: float(v)
            for k, v in metadata.items()
            if k.startswith(("two_kl", "pairs_outside", "neighbours_outside", "nearest_dist"))
        },
        tags={"modelmap.asset": "kl_table"},
        artifacts={"kl_table": [out / "neighbours.parquet", *_if_exists(out / "pairs.parquet")]},
        context=context,
    )
    return dg.MaterializeResult(metadata=metadata)


def _if_exists(path: Path) -> list[Path]:
    return [path] if path.exists() else []


def _nearest_md(neighbours: pl.DataFrame, level: float) -> str:
    """The rank-1 rows as Markdown: bits/byte with its interval, or the map distance outside
    the KL regime; whether the nearest is told apart from the second; the text set."""
    lines = [
        f"| model | nearest | 2KL (bits/byte, {level:.0%} interval) | told apart from 2nd | "
        "scored on |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in neighbours.filter(pl.col("rank") == 1).head(200).iter_rows(named=True):
        if r["in_kl_regime"]:
            value = (
                f"{r['two_kl_bits_per_byte']:.4f} [{r['two_kl_bits_per_byte_low']:.4f}, "
                f"{r['two_kl_bits_per_byte_high']:.4f}]"
            )
        else:
            value = f"outside the KL regime (map distance {r['two_kl_nats']:.4g} nats/text)"
        told = {True: "yes", False: "no", None: ""}[r["distinguishable"]]
        lines.append(f"| {r['model']} | {r['neighbour']} | {value} | {told} | {r['text_set']} |")
    return "\n".join(lines)


class ModelMapConfig(dg.Config):
    keep_previous: bool = Field(
        default=True,
        description="start from the previous map and align to it, so that the models on it "
        "do not move; false: a fresh t-SNE",
    )


@dg.asset(
    deps=[coordinates, kl_table],
    automation_condition=refresh,
    kinds={"plotly"},
    group_name="modelmap",
)
def model_map(
    context: dg.AssetExecutionContext,
    config: ModelMapConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The 2-D map: t-SNE of Q with the paper's settings (PCA for very few models).

    A map users can learn: models already on the previous map start where they were and the
    result is aligned to it (Procrustes), so they stay put; new models start where
    `modelmap neighbours` placed them. Writes `map.png`, an interactive `map.html` and
    `map.parquet` (key, family, x, y).
    """
    index, Q, info = read_coordinates(storage)
    keys = index["key"].to_list()
    families = index["family"].to_list()
    previous = _previous_map(storage.root / "model_map" / "map.parquet", keys, info["corpus_hash"])
    graph = read_graph(storage)
    if config.keep_previous and previous is not None and len(keys) >= MIN_MODELS_FOR_TSNE:
        xy = embed_stable(Q, previous[0], previous[1], graph=graph)
        method = "tsne"
        context.log.info(f"{len(previous[1])} of {len(keys)} models kept from the previous map")
    else:
        xy, method = embed_2d(Q, graph=graph)
    scored_on = [f"all {info['N']} texts (embedded)"] * len(keys)
    mean_loglik = [round(v, 2) for v in index["mean_loglik_nats"]]
    # Models scored on a text budget cannot enter the embedding (their row is partial): each
    # is placed at the 1/distance-weighted mean of its 5 nearest embedded models.
    corpus_df, _ = storage.read_corpus()
    budget = budget_rows(context, storage, info, corpus_df["text_id"].to_numpy())
    if budget:
        L_clipped = np.load(
            storage.current_version_dir("coordinates") / "L_clipped.npy", mmap_mode="r"
        )
        placed = []
        for b in budget:
            sq = partial_row_distances(
                b["loglik"],
                L_clipped,
                b["columns"],
                b["selection"]["weight"].to_numpy(),
                info["clip_threshold_nats"],
            )
            placed.append(place_from_neighbours(xy, sq))
            scored_on.append(
                f"text budget: {len(b['columns'])} texts (placed from neighbours, not embedded)"
            )
            mean_loglik.append("n/a (budget)")
        xy = np.vstack([xy, np.array(placed)])
        keys = keys + [b["key"] for b in budget]
        families = families + [b["family"] for b in budget]
    out = storage.asset_dir("model_map")
    budget_keys = [b["key"] for b in budget]
    png = plot_map_png(
        xy,
        [k + " [budget]" if k in budget_keys else k for k in keys],
        families,
        out / "map.png",
        title=f"modelmap: {len(keys)} models ({method})"
        + (f"; {len(budget)} scored on the text budget, placed" if budget else ""),
    )
    nearest = _nearest(storage, keys)
    html = write_map_html(
        xy,
        keys,
        families,
        out / "map.html",
        extra={
            "mean log-likelihood (nats)": mean_loglik,
            "nearest": nearest,
            "scored on": scored_on,
        },
        notes_html=scale_bands_html(_regime_limit(storage)),
    )
    write_parquet(
        pl.DataFrame(
            {
                "key": keys,
                "family": families,
                "x": xy[:, 0],
                "y": xy[:, 1],
                "text_set": [TEXT_SET_BUDGET if k in budget_keys else TEXT_SET_ALL for k in keys],
            }
        ),
        out / "map.parquet",
        {"corpus_hash": info["corpus_hash"], "method": method, "budget_models": budget_keys},
    )
    context.log.info(f"map of {len(keys)} models ({method}) at {png}")
    mlflow.log_run(
        "model_map",
        params={
            "K": len(keys),
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": ",".join(budget_keys)[:500],
        },
        metrics={"K": len(keys), "budget_models": len(budget_keys)},
        tags={"modelmap.asset": "model_map"},
        artifacts={"map": [png, html, out / "map.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            "K": len(keys),
            "method": method,
            "corpus_hash": info["corpus_hash"],
            "budget_models": dg.MetadataValue.json(budget_keys),
            "map": dg.MetadataValue.md(png_md(png, "model map")),
            "png": dg.MetadataValue.path(str(png)),
            "html": dg.MetadataValue.path(str(html)),
        }
    )


def _previous_map(
    path: Path, keys: list[str], corpus_hash: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(positions, rows in `keys`) of the models of the previous t-SNE map on this corpus."""
    if not path.exists():
        return None
    meta = read_parquet_metadata(path)
    if meta.get("corpus_hash") != corpus_hash or meta.get("method") != "tsne":
        return None
    row_of = {k: i for i, k in enumerate(keys)}
    kept = pl.read_parquet(path).filter(pl.col("key").is_in(list(row_of)))
    if kept.height < 3:
        return None
    rows = np.array([row_of[k] for k in kept["key"].to_list()], dtype=np.int64)
    return kept.select("x", "y").to_numpy().astype(np.float64), rows


def _regime_limit(storage: StorageResource) -> float:
    """The KL-regime limit the current `kl_table` was written with."""
    path = storage.root / "kl_table" / "neighbours.parquet"
    if path.exists():
        return float(
            read_parquet_metadata(path).get(
                "kl_regime_max_bits_per_byte", KL_REGIME_MAX_BITS_PER_BYTE
            )
        )
    return KL_REGIME_MAX_BITS_PER_BYTE


def _nearest(storage: StorageResource, keys: list[str]) -> list[str]:
    path = storage.root / "kl_table" / "neighbours.parquet"
    if not path.exists():
        return [""] * len(keys)
    first = pl.read_parquet(path).filter(pl.col("rank") == 1)
    lookup = dict(zip(first["model"].to_list(), first["neighbour"].to_list(), strict=True))
    return [lookup.get(k, "") for k in keys]
