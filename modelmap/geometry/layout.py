"""Where each model sits on the 2-D map: the embedded models, then those scored on a budget.

The mapped models (rows of Q) are embedded by :mod:`modelmap.geometry.mapping`: from the
previous map when there is one (so that they stay put), else afresh. A model scored on a text
budget cannot enter the embedding (its row is partial): it is placed at the
1/distance-weighted mean of its 5 nearest embedded models, its distances weighted over its
selected texts (:mod:`modelmap.geometry.textbudget`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from modelmap.geometry.kl import NeighbourGraph
from modelmap.geometry.mapping import MIN_MODELS_FOR_TSNE, embed_2d, embed_stable
from modelmap.geometry.textbudget import partial_row_distances, place_from_neighbours
from modelmap.likelihoods import TEXT_SET_ALL, TEXT_SET_BUDGET
from modelmap.storage import read_parquet_metadata


@dataclass
class MapLayout:
    """Positions and hover columns of every model on the map, mapped models first.

    Attributes:
        xy: M x 2 float64 positions.
        keys, families: M model keys and families.
        method: the embedding (``tsne``, ``pca``, ``single`` or ``line``).
        scored_on: M descriptions of the texts each model was scored on.
        mean_loglik: M mean log-likelihoods (nats, rounded) or ``"n/a (budget)"``.
        budget_keys: the models placed from their neighbours, not embedded.
        kept: models that started from their place on the previous map (0: a fresh map).
    """

    xy: np.ndarray
    keys: list[str]
    families: list[str]
    method: str
    scored_on: list[str]
    mean_loglik: list
    budget_keys: list[str] = field(default_factory=list)
    kept: int = 0

    @property
    def labels(self) -> list[str]:
        """The keys, a budget model's marked ``[budget]`` (the PNG's point labels)."""
        return [k + " [budget]" if k in self.budget_keys else k for k in self.keys]

    @property
    def title(self) -> str:
        budget = self.budget_keys
        return f"modelmap: {len(self.keys)} models ({self.method})" + (
            f"; {len(budget)} scored on the text budget, placed" if budget else ""
        )

    def frame(self) -> pl.DataFrame:
        """key, family, x, y, text_set: the rows of ``map.parquet``."""
        budget = set(self.budget_keys)
        return pl.DataFrame(
            {
                "key": self.keys,
                "family": self.families,
                "x": self.xy[:, 0],
                "y": self.xy[:, 1],
                "text_set": [TEXT_SET_BUDGET if k in budget else TEXT_SET_ALL for k in self.keys],
            }
        )


def previous_map(
    path: Path, keys: list[str], corpus_hash: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(m x 2 positions, their rows in `keys`) of the models of the previous t-SNE map
    (``map.parquet`` at `path`) on this corpus; None without one or with fewer than 3."""
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


def lay_out_map(
    Q: np.ndarray,
    keys: list[str],
    families: list[str],
    mean_loglik_nats: Sequence[float],
    *,
    graph: NeighbourGraph | None = None,
    previous: tuple[np.ndarray, np.ndarray] | None = None,
    budget: Sequence[dict] = (),
    L_clipped: np.ndarray | None = None,
    clip_threshold_nats: float = -np.inf,
) -> MapLayout:
    """The map of the K mapped models (rows of Q, K x N nats) and of the budget models.

    Args:
        keys, families, mean_loglik_nats: per row of Q.
        graph: a ``kl.NeighbourGraph`` of Q, to skip the nearest-model pass.
        previous: `previous_map`'s positions and rows, to start from (None: a fresh map).
        budget: per budget model ``key``, ``family``, ``loglik`` (n,) nats on its selected
            texts, ``selection`` (with ``weight``) and ``columns`` (n,) in L's columns.
        L_clipped: K x N clipped L (nats) of the mapped models; needed with `budget`.
        clip_threshold_nats: the clip value of `L_clipped`.
    """
    K, N = Q.shape
    kept = 0
    if previous is not None and K >= MIN_MODELS_FOR_TSNE:
        xy = embed_stable(Q, previous[0], previous[1], graph=graph)
        method, kept = "tsne", len(previous[1])
    else:
        xy, method = embed_2d(Q, graph=graph)
    layout = MapLayout(
        xy=xy,
        keys=list(keys),
        families=list(families),
        method=method,
        scored_on=[f"all {N} texts (embedded)"] * K,
        mean_loglik=[round(v, 2) for v in mean_loglik_nats],
        kept=kept,
    )
    if not budget:
        return layout
    placed = []
    for b in budget:
        weight = b["selection"]["weight"].to_numpy()
        sq = partial_row_distances(
            b["loglik"], L_clipped, b["columns"], weight, clip_threshold_nats
        )
        placed.append(place_from_neighbours(xy, sq))
        layout.scored_on.append(
            f"text budget: {len(b['columns'])} texts (placed from neighbours, not embedded)"
        )
        layout.mean_loglik.append("n/a (budget)")
        layout.keys.append(b["key"])
        layout.families.append(b["family"])
        layout.budget_keys.append(b["key"])
    layout.xy = np.vstack([xy, np.array(placed)])
    return layout
