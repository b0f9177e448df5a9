"""The `text_selection` asset: the text budget a new model can be scored on (issue 14).

The science is `modelmap.geometry.text_selection`; this asset reads the current Q, measures the
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

import dagster as dg
import numpy as np
from pydantic import Field

from modelmap.geometry.text_selection import TextBudgetSettings, plot_curve_png, size_text_budget
from modelmap.geometry.textbudget import selection_hash
from modelmap.selections import selection_folder, write_selection
from modelmap.storage import write_parquet
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

    def settings(self) -> TextBudgetSettings:
        return TextBudgetSettings(
            target_rel_error=self.target_rel_error,
            n_seeds=self.n_seeds,
            grid_ratio=self.grid_ratio,
            n_min=self.n_min,
            max_queries=self.max_queries,
            budget_texts=self.budget_texts,
            seed=self.seed,
        )


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
    K, N = Q.shape
    if K < 3:
        raise dg.Failure(description=f"a text budget needs at least 3 models on the map, got {K}")
    budget = size_text_budget(np.asarray(Q), index["family"].to_list(), config.settings())
    needed, sel = budget.needed, budget.selection
    if config.budget_texts is None and needed.get("ls") is None:
        context.log.warning(
            f"LS did not reach {config.target_rel_error:.0%} on the grid: the budget is all {N}"
        )
    selected = budget.selected(corpus_df["text_id"].to_numpy())
    hash_ = selection_hash(info["corpus_hash"], selected["text_id"].to_numpy(), sel.weight)
    meta = {
        "corpus_hash": info["corpus_hash"],
        "selection_hash": hash_,
        "sampler": "ls",
        "n_texts": selected.height,
        "n_draws": sel.n_draws,
        "N": N,
        "K_fitted": K,
        "target_rel_error": config.target_rel_error,
        "n_needed_uniform": needed.get("uniform"),
        "n_needed_ls": needed.get("ls"),
        "seed": config.seed,
    }
    folder = selection_folder(storage.root)
    write_parquet(budget.curve, folder / "curve.parquet", {"corpus_hash": info["corpus_hash"]})
    write_parquet(budget.summary, folder / "summary.parquet", meta)
    png = plot_curve_png(budget.summary, config.target_rel_error, folder / "curve.png")
    write_selection(storage.root, selected, meta)
    ratio = budget.ls_over_uniform
    metrics = {
        "n_needed_uniform": needed.get("uniform"),
        "n_needed_ls": needed.get("ls"),
        "ls_over_uniform": ratio,
    }
    mlflow.log_run(
        "text_selection",
        params={k: v for k, v in meta.items() if k != "selection_hash"}
        | {"selection_hash": hash_[:16]},
        metrics={k: float(v) for k, v in metrics.items() if v is not None},
        tags={"modelmap.asset": "text_selection"},
        artifacts={"text_selection": [png, folder / "summary.parquet"]},
        context=context,
    )
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in meta.items() if v is not None},
            "ls_over_uniform": ratio if ratio is not None else "n/a",
            "curve": dg.MetadataValue.md(png_md(png, "n against error")),
            "summary": dg.MetadataValue.md(md_table(budget.summary)),
            "path": dg.MetadataValue.path(str(folder)),
        }
    )
