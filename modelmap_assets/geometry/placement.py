"""A model's nearest neighbours and map position in a notebook, with the code location's
settings (`MODELMAP_DATA`); the placement itself is `modelmap.geometry.neighbours.place`."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from modelmap.geometry.neighbours import DEFAULT_NEIGHBOURS, place
from resources.settings import build_resources


def neighbours(
    key: str, k: int = DEFAULT_NEIGHBOURS, data_dir: str | Path | None = None
) -> pl.DataFrame:
    """A model's ``k`` nearest mapped models by 2KL, with its map position.

    Columns: model, rank, neighbour, two_kl_nats, two_kl_bits_per_byte, map_x, map_y (the
    model's own position, repeated). ``data_dir``: modelmap's data folder (default: the
    `storage` resource's, i.e. ``MODELMAP_DATA`` or ``data``). Works for a model scored
    after the last full refresh as well as for one on the map.
    """
    root = data_dir if data_dir is not None else build_resources(os.environ)["storage"].root
    return place(root, key, k).table()
