"""A backfill of many model partitions through the real webserver and daemon (not a test).

    python benchmarks/bench_backfill.py --models 50 [--storage sqlite|postgres]

Builds the small zoo, registers `--models` keys `batch/mNN` (each a copied folder of one small-zoo
model, so every run loads and scores a real model), materializes a 40-text corpus, starts the
daemon and the webserver on a fresh DAGSTER_HOME (the committed dagster.yaml, or
dagster.postgres.yaml on a fresh database of the `make postgres` server), launches one backfill
with `modelmap backfill` and reports its wall time, the runs, how many times the map was
refreshed, and whether "database is locked" appeared in any log.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
from dagster._core.instance.ref import InstanceRef

from modelmap.zoo import ZooSpec, build_zoo
from modelmap_assets.cli import backfill, materialize_corpus
from modelmap_assets.definitions import build_resources
from modelmap_assets.local_platform import REPO, running_platform


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-port", default="5433")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="modelmap-backfill-"))
    home = tmp / "dagster_home"
    home.mkdir()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MODELMAP_DATA": str(tmp / "data"),
        "MODELMAP_CACHE": str(tmp / "cache"),
        "MODELMAP_LOCAL_MODELS": str(tmp / "models"),
        "MODELMAP_DEVICE": "cpu",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
    }
    if args.storage == "postgres":
        db = f"bench_{uuid.uuid4().hex[:8]}"
        pg = {
            "MODELMAP_PG_HOST": "127.0.0.1",
            "MODELMAP_PG_PORT": args.pg_port,
            "MODELMAP_PG_USER": "modelmap",
            "MODELMAP_PG_PASSWORD": "",
            "MODELMAP_PG_DB": db,
        }
        createdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/createdb"))[-1]
        subprocess.run(
            [str(createdb), "-h", "127.0.0.1", "-p", args.pg_port, "-U", "modelmap", db],
            check=True,
        )
        env.update(pg)
        os.environ.update(pg)
        shutil.copy(REPO / "dagster_home" / "dagster.postgres.yaml", home / "dagster.yaml")
    else:
        shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")

    zoo = build_zoo(tmp / "cache" / "zoo", spec=ZooSpec.small(), log=lambda s: None)
    keys = []
    for i in range(args.models):
        source = zoo[i % len(zoo)]
        target = tmp / "models" / "batch" / f"m{i:02d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(
            source.local_path(tmp / "cache" / "zoo"), target
        )  # no links: keys stay inside
        keys.append(f"batch/m{i:02d}")
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    materialize_corpus(instance, build_resources(env), {"n_texts": 40})
    with running_platform(env, tmp / "logs") as url:
        t0 = time.time()
        code = backfill(instance, keys, url, wait=True, timeout_s=3 * 3600)
        wall = time.time() - t0
    runs = instance.get_runs()
    statuses = {}
    for r in runs:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    refreshes = len(instance.fetch_materializations(dg.AssetKey("model_map"), limit=1000).records)
    locked = sum(
        p.read_text(errors="replace").count("database is locked") for p in (tmp / "logs").iterdir()
    )
    result = {
        "storage": args.storage,
        "models": args.models,
        "backfill_exit": code,
        "wall_s": round(wall, 1),
        "runs": statuses,
        "map_refreshes": refreshes,
        "database_is_locked": locked,
        "folder": str(tmp),
    }
    print(json.dumps(result, indent=1))
    instance.dispose()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
