"""A backfill of many model partitions through the real webserver and daemon (not a test).

    python benchmarks/bench_backfill.py --models 50 [--storage sqlite|postgres]

Registers `--models` keys `batch/mNN` (each a copied folder of one small-zoo model, so every run
loads and scores a real model) on a fresh platform (`workshop/platform.py`: the
committed dagster.yaml, or dagster.postgres.yaml on a fresh database of the `make postgres`
server, and a 40-text corpus), launches one backfill with `modelmap backfill` and reports its
wall time, the runs, how many times the map was refreshed, whether "database is locked"
appeared in any log, and the per-run timings (queued, process start, steps).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np

from modelmap_assets.cli.main import backfill
from workshop.platform import local_platform, prepare


def run_timings(instance: dg.DagsterInstance) -> dict:
    """Median seconds per model run: launch to process start, and start to end."""
    records = [r for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/partition")]
    starts = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    runs = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    return {
        "median_s_to_start": round(float(np.median(starts)), 1),
        "median_s_start_to_end": round(float(np.median(runs)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-port", default="5433")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelmap-backfill-"))
    extra, instance_yaml = {}, "dagster.yaml"
    if args.storage == "postgres":
        db = f"bench_{uuid.uuid4().hex[:8]}"
        extra = {
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
        instance_yaml = "dagster.postgres.yaml"
    platform = prepare(root, instance_yaml=instance_yaml, extra_env=extra)
    keys = platform.copy_batch(args.models)
    instance = platform.instance
    with local_platform(platform.env, platform.logs) as servers:
        t0 = time.time()
        code = backfill(instance, keys, servers.url, wait=True, timeout_s=3 * 3600)
        wall = time.time() - t0
    statuses: dict[str, int] = {}
    for r in instance.get_runs():
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    refreshes = len(instance.fetch_materializations(dg.AssetKey("model_map"), limit=1000).records)
    locked = sum(
        p.read_text(errors="replace").count("database is locked") for p in platform.logs.iterdir()
    )
    result = {
        "storage": args.storage,
        "models": args.models,
        "backfill_exit": code,
        "wall_s": round(wall, 1),
        "runs": statuses,
        "map_refreshes": refreshes,
        "database_is_locked": locked,
        **run_timings(instance),
        "folder": str(root),
    }
    print(json.dumps(result, indent=1))
    instance.dispose()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
