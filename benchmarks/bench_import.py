"""Import a synthetic matrix of the paper's shape and place a scored model among it (not a test).

    python benchmarks/bench_import.py [--models 1018] [--texts 10000]

In a temporary folder: a `texts-10k-pile.jsonl`-shaped corpus of `--texts` short unique texts
(short so that scoring a model on all of them takes seconds on a CPU), one real tiny model
scored on it through the `likelihood` asset, and a pickle of `--models` rows in the published
format (float32 vectors): families around random centres plus one near copy of the scored
model's row. It times reading the pickle with the restricted unpickler, the import (one
likelihood file and one recorded materialization per model), `coordinates` and `kl_table`, and
checks that the scored model's nearest neighbour is its near copy. Prints JSON.
"""

import argparse
import json
import pickle
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hubtools import make_tiny_model  # noqa: E402

from modelmap.likelihoods import read_rows  # noqa: E402
from modelmap.published import PAPER_CORPUS_FILE, read_published_matrix  # noqa: E402
from modelmap_assets.definitions import ASSETS, build_resources  # noqa: E402
from modelmap_assets.scoring.imports import import_published_matrix  # noqa: E402
from resources.benchmarks import BenchmarkResource  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=1018)
    parser.add_argument("--texts", type=int, default=10_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelmap-import-"))
    corpus_file = root / PAPER_CORPUS_FILE
    with corpus_file.open("w") as fh:
        for i in range(args.texts):
            text = f"Text {i}: the {i % 7}th example of a short line, number {i * 7919 % 10007}."
            fh.write(json.dumps({"text": text, "pile_set_name": "Pile-CC", "pile_idx": i}) + "\n")
    make_tiny_model(root / "models" / "mine" / "tiny")
    env = {
        "MODELMAP_DATA": str(root / "data"),
        "MODELMAP_LOCAL_MODELS": str(root / "models"),
        "MODELMAP_DEVICE": "cpu",
        "MODELMAP_MLFLOW": "off",
    }
    resources = {**build_resources(env), "benchmarks": BenchmarkResource(measure="never")}
    storage = resources["storage"]
    timings = {}
    with dg.instance_for_test() as instance:
        config = {"source": "jsonl", "path": str(corpus_file), "n_texts": args.texts, "n_twins": 0}
        dg.materialize(
            ASSETS,
            selection=["corpus"],
            instance=instance,
            resources=resources,
            run_config={"ops": {"corpus": {"config": config}}},
        )
        instance.add_dynamic_partitions("models", ["mine/tiny"])
        t0 = time.perf_counter()
        dg.materialize(
            ASSETS,
            selection=["likelihood"],
            partition_key="mine/tiny",
            instance=instance,
            resources=resources,
        )
        timings["score_one_model_s"] = time.perf_counter() - t0
        mine = read_rows(storage.likelihood_path("mine/tiny"))["loglik"].to_numpy()

        rng = np.random.default_rng(0)
        scale = float(np.std(mine))
        published = {"near/copy-of-mine": (mine + rng.normal(0, 0.01 * scale, mine.size))}
        n_families = max(1, (args.models - 1) // 20)
        centres = [mine + rng.normal(0, scale, mine.size) for _ in range(n_families)]
        for i in range(args.models - 1):
            centre = centres[i % n_families]
            published[f"family{i % n_families}/m{i}"] = centre + rng.normal(
                0, 0.3 * scale, mine.size
            )
        pkl = root / "raw_log-likelihood_1018.pkl"
        pkl.write_bytes(pickle.dumps({k: v.astype(np.float32) for k, v in published.items()}))

        t0 = time.perf_counter()
        read_published_matrix(pkl)
        timings["read_pickle_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = import_published_matrix(instance, storage, pkl, log=lambda s: None)
        timings["import_s"] = time.perf_counter() - t0
        for asset in ("coordinates", "kl_table"):
            t0 = time.perf_counter()
            dg.materialize(ASSETS, selection=[asset], instance=instance, resources=resources)
            timings[f"{asset}_s"] = time.perf_counter() - t0
        nn = pl.read_parquet(storage.root / "kl_table" / "neighbours.parquet")
        mine_nn = nn.filter(pl.col("model") == "mine/tiny").sort("rank")
    result = {
        "models_imported": len(report.imported),
        "texts": args.texts,
        "pickle_mb": round(pkl.stat().st_size / 2**20, 1),
        **{k: round(v, 2) for k, v in timings.items()},
        "nearest_of_scored_model": mine_nn["neighbour"].to_list()[:3],
        "placed_next_to_its_copy": mine_nn["neighbour"][0] == "near/copy-of-mine",
        "folder": str(root),
    }
    print(json.dumps(result, indent=1))
    return 0 if result["placed_next_to_its_copy"] else 1


if __name__ == "__main__":
    sys.exit(main())
