"""The `text_selection` asset: the text budget a new model can be scored on (issue 14).

The science is `modelmap.geometry.textbudget`; this asset reads the current Q, measures the
error of n selected texts against all N for uniform and LS sampling, picks the smallest n
meeting the target, draws that selection by LS from every model and writes it, versioned
by its hash, under ``data/text_selection/``:

```
selections/<selection_hash>.parquet   text_id, count, probability, weight (+ corpus_hash, ...)
CURRENT.json                          {"selection_hash": ...}: what `likelihood` scores on a budget
curve.parquet, summary.parquet        n against error, per seed and averaged
curve.png                             the plot
```
"""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from modelmap.geometry.textbudget import (
    budget_error_curve,
    n_needed,
    select_texts,
    selection_hash,
    summarise_curve,
)
from modelmap.selections import selection_folder, write_selection
from modelmap.storage import write_atomic, write_parquet
from modelmap_assets.geometry.coordinates import coordinates, read_coordinates, refresh
from modelmap_assets.metadata import md_table, png_md
from resources.mlflow import MlflowResource
from resources.storage import StorageResource


class TextSelectionConfig(dg.Config):
    target_rel_error: float = Field(
        default=0.05,
        description="target median relative error of pairwise 2KL against all N texts; the "
        "budget is the smallest n whose LS error (mean over seeds) meets it",
    )
    n_seeds: int = Field(default=10, description="draw streams per sampler (at least 10)")
    grid_ratio: float = Field(
        default=1.2, description="consecutive n of the grid differ by at most this factor"
    )
    n_min: int = Field(default=10, description="smallest n of the grid")
    max_queries: int = Field(
        default=200, description="models whose distances to every model are evaluated"
    )
    budget_texts: int | None = Field(
        default=None, description="override: select this many texts whatever the curve says"
    )
    seed: int = Field(default=42, description="seed of the budget's draw")


def _plot(summary: pl.DataFrame, target: float, path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for sampler, colour in (("uniform", "tab:blue"), ("ls", "tab:red")):
        rows = summary.filter(pl.col("sampler") == sampler)
        if rows.height:
            ax.errorbar(
                rows["n_texts"],
                rows["median_rel_error"],
                yerr=rows["median_rel_error_sd"].fill_null(0.0),
                label=sampler.upper() if sampler == "ls" else sampler,
                color=colour,
                marker="o",
                ms=3,
                capsize=2,
            )
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.0%}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distinct texts n")
    ax.set_ylabel("median relative error of 2KL")
    ax.legend(frameon=False)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


@dg.asset(deps=[coordinates], automation_condition=refresh, kinds={"numpy"}, group_name="modelmap")
def text_selection(
    context: dg.AssetExecutionContext,
    config: TextSelectionConfig,
    storage: StorageResource,
    mlflow: MlflowResource,
) -> dg.MaterializeResult:
    """The texts a new model may be scored on instead of all N (LS sampling, arXiv 2505.15428),
    with their importance weights, and the n-against-error curve that sized it."""
    index, Q, info = read_coordinates(storage)
    corpus_df, _ = storage.read_corpus()
    text_ids = corpus_df["text_id"].to_numpy()
    K, N = Q.shape
    if K < 3:
        raise dg.Failure(description=f"a text budget needs at least 3 models on the map, got {K}")
    families = index["family"].to_list()
    curve = budget_error_curve(
        np.asarray(Q),
        families,
        target_rel_error=config.target_rel_error,
        n_seeds=config.n_seeds,
        grid_ratio=config.grid_ratio,
        n_min=config.n_min,
        max_queries=config.max_queries,
    )
    summary = summarise_curve(curve)
    needed = n_needed(summary, config.target_rel_error)
    n_budget = config.budget_texts or needed.get("ls") or N
    if config.budget_texts is None and needed.get("ls") is None:
        context.log.warning(
            f"LS did not reach {config.target_rel_error:.0%} on the grid: the budget is all {N}"
        )
    sel = select_texts(np.asarray(Q), min(n_budget, N), sampler="ls", seed=config.seed)
    ids = text_ids[sel.index]
    hash_ = selection_hash(info["corpus_hash"], ids, sel.weight)
    meta = {
        "corpus_hash": info["corpus_hash"],
        "selection_hash": hash_,
        "sampler": "ls",
        "n_texts": len(ids),
        "n_draws": sel.n_draws,
        "N": N,
        "K_fitted": K,
        "target_rel_error": config.target_rel_error,
        "n_needed_uniform": needed.get("uniform"),
        "n_needed_ls": needed.get("ls"),
        "seed": config.seed,
    }
    folder = selection_folder(storage.root)
    selected = pl.DataFrame(
        {
            "text_id": ids.astype(np.int64),
            "count": sel.count,
            "probability": sel.probability,
            "weight": sel.weight,
        }
    )
    write_parquet(curve, folder / "curve.parquet", {"corpus_hash": info["corpus_hash"]})
    write_parquet(summary, folder / "summary.parquet", meta)
    png = _plot(summary, config.target_rel_error, folder / "curve.png")
    write_selection(storage.root, selected, meta)
    ratio = needed["ls"] / needed["uniform"] if needed.get("ls") and needed.get("uniform") else None
    mlflow.log_run(
        "text_selection",
        params={k: v for k, v in meta.items() if k != "selection_hash"}
        | {"selection_hash": hash_[:16]},
        metrics={
            k: float(v)
            for k, v in {
                "n_needed_uniform": needed.get("uniform"),
                "n_needed_ls": needed.get("ls"),
                "ls_over_uniform": ratio,
            }.items()
            if v is not None
        },
        tags={"modelmap.asset": "text_selection"},
        artifacts={"text_selection": [png, folder / "summary.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in meta.items() if v is not None},
            "ls_over_uniform": ratio if ratio is not None else "n/a",
            "curve": dg.MetadataValue.md(png_md(png, "n against error")),
            "summary": dg.MetadataValue.md(md_table(summary)),
            "path": dg.MetadataValue.path(str(folder)),
        }
    )
