"""A backfill of many model partitions through the real webserver and daemon (not a test).

    python benchmarks/bench_backfill.py --models 50 [--texts 40] [--storage sqlite|postgres]
                                        [--pure-sample S] [--write]

Registers `--models` keys `batch/mNN` (each a copied folder of one small-zoo model, so every run
loads and scores a real model) on a fresh platform (`workshop/platform.py`: the
committed dagster.yaml, or it with storage.postgres.yaml layered on, on a fresh database of
the `make postgres` server, and a corpus of `--texts` texts, 40 by default, and its 100
held-out twin texts), launches one backfill with `modelmap backfill` and reports its
wall time, the runs, how many times the map was refreshed, whether "database is locked"
appeared in any log, and the per-run timings (queued, process start, steps).

The two figures of the issue's target:
- `wall_s`: from the launch of the backfill to the last `likelihood` materialization of its
  models (the map's refresh after it is not counted);
- `pure_scoring_s`: the same models scored one after another in this process, warm (libraries
  imported and one model scored before timing), each model loaded from its folder and scored
  on the same corpus (and its held-out twin texts, as the asset does) with the same scorer
  settings: what the batch would cost with no platform at all. It is timed just before and
  just after the backfill (the mean is the figure; a shared machine's load moves both).
`benchmark_scores` runs in the same runs as `likelihood`; by default it measures no tasks
(`MODELMAP_BENCHMARK_MEASURE=never`, it still writes each model's file), so both figures time
the same work; `--measure-tasks` measures the tasks in the backfill and in the pure loop alike.
MLflow is off by default (`--mlflow on`: a run per model and asset in a SQLite store, which the
pure loop does not pay).
With `--write` the figures go to the `backfill` entry of `benchmarks/scale.json` (other
entries are kept).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap_assets.cli.main import backfill
from modelmap_assets.scoring.batches import MODELS_PER_RUN, RANGE_START_TAG
from workshop.platform import local_platform, prepare

SCALE_JSON = Path(__file__).resolve().parent / "scale.json"


def last_likelihood_at(instance: dg.DagsterInstance, keys: list[str]) -> float:
    """Unix time of the last `likelihood` materialization of `keys`."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("likelihood"), asset_partitions=keys),
        limit=len(keys) * 4,
    ).records
    return max(r.timestamp for r in records)


def pure_scoring_s(env: dict, keys: list[str], measure_tasks: bool) -> float:
    """Seconds to load and score `keys` one after another in this (warmed-up) process."""
    from modelmap.reports.tasks import evaluate_tasks
    from modelmap.scoring.engine import default_token_budget
    from modelmap_assets.definitions import build_resources

    resources = build_resources(env)
    scorer, source = resources["scorer"], resources["model_source"]
    storage = resources["storage"]
    corpus_df, corpus_meta = storage.read_corpus()
    texts = corpus_df["text"].to_list()
    # The held-out twin texts are scored with every model too (for the leakage screen).
    twins = storage.read_twins(corpus_meta["corpus_hash"])
    twin_texts = twins[0]["text"].to_list() if twins is not None else []
    tasks = resources["benchmarks"].tasks() if measure_tasks else None

    def one(key: str) -> None:
        loaded = scorer.load(key, source.describe(key)["path"])
        scorer.score(loaded, texts, log=lambda s: None)
        if twin_texts:
            scorer.score(loaded, twin_texts, log=lambda s: None)
        if tasks is not None:
            budget = scorer.token_budget or default_token_budget(loaded.device)
            evaluate_tasks(
                loaded.model,
                loaded.tokenizer,
                tasks,
                context=loaded.context_length,
                token_budget=budget,
                log=lambda s: None,
            )

    one(keys[0])  # warm-up: imports, kernels, the tokenizer cache's first fill
    t0 = time.perf_counter()
    for key in keys:
        one(key)
    return time.perf_counter() - t0


def write_backfill_entry(entry: dict, key: str = "backfill") -> None:
    """Read-modify-write only the `key` entry of scale.json (others own `runs` etc.)."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "modelmap-scale-json.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(SCALE_JSON.read_text()) if SCALE_JSON.exists() else {}
        data[key] = entry
        tmp = SCALE_JSON.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1) + "\n")
        tmp.replace(SCALE_JSON)


def scoring_runs(instance: dg.DagsterInstance) -> list:
    """The run records of the scoring runs (one model, or a range of models)."""
    return [
        r
        for r in instance.get_run_records()
        if r.dagster_run.tags.get("dagster/partition") or r.dagster_run.tags.get(RANGE_START_TAG)
    ]


def run_timings(records: list) -> dict:
    """Median seconds per scoring run (one model or a batch): launch to process start, and
    start to end."""
    starts = [r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time]
    runs = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    return {
        "median_s_to_start": round(float(np.median(starts)), 1),
        "median_s_start_to_end": round(float(np.median(runs)), 1),
    }


def breakdown(
    instance: dg.DagsterInstance, records: list, launched_at: float, last_at: float, n: int
) -> dict:
    """Where the time from the launch to the last likelihood went: until the backfill daemon
    created the first run, then the runs (`records`); and the `likelihood` steps' seconds per
    model."""
    first = min(r.create_timestamp.timestamp() for r in records)
    step_s = 0.0
    for r in records:
        events = instance.all_logs(
            r.dagster_run.run_id,
            of_type={dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS},
        )
        times = {(e.step_key, e.dagster_event_type): e.timestamp for e in events}
        start = times.get(("likelihood", dg.DagsterEventType.STEP_START))
        end = times.get(("likelihood", dg.DagsterEventType.STEP_SUCCESS))
        if start and end:
            step_s += end - start
    return {
        "backfill_to_first_run_s": round(first - launched_at, 1),
        "runs_s": round(last_at - first, 1),
        "in_run_s_per_model": round(step_s / n, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument(
        "--texts",
        type=int,
        default=40,
        help="corpus texts (the twins are N/10, at least 100); 40: a small model scores in "
        "about 0.3 s on 2 cores, 400: in about 1 s, the issue's 'models that score in about a "
        "second each'",
    )
    parser.add_argument("--storage", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--pg-port", default="5433")
    parser.add_argument("--measure-tasks", action="store_true")
    parser.add_argument(
        "--mlflow", choices=["on", "off"], default="off", help="MLflow run per model and asset"
    )
    parser.add_argument("--write", action="store_true", help="write benchmarks/scale.json")
    parser.add_argument(
        "--pure-sample",
        type=int,
        default=None,
        help="time the pure loop on the first S models only and scale it to all (the models "
        "are copies of the six small-zoo models in turn, so S a multiple of 6 is exact)",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="modelmap-backfill-"))
    measure = "missing" if args.measure_tasks else "never"
    extra = {
        "MODELMAP_BENCHMARK_MEASURE": measure,
        "MODELMAP_MLFLOW": args.mlflow,
        # The product's automation interval, not the tests' 5 s: each evaluation takes the
        # daemon most of a second of CPU, which the scoring run shares.
        "MODELMAP_AUTOMATION_SECONDS": "30",
    }
    if args.storage == "postgres":
        db = f"bench_{uuid.uuid4().hex[:8]}"
        extra |= {
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
    postgres = args.storage == "postgres"
    platform = prepare(root, postgres=postgres, n_texts=args.texts, extra_env=extra)
    keys = platform.copy_batch(args.models)
    instance = platform.instance
    # The machine may be shared: time the pure loop just before and just after the backfill,
    # and compare the backfill with their mean (both are reported, with the load averages).
    load_before = os.getloadavg()[0]
    sample = keys[: args.pure_sample] if args.pure_sample else keys
    scale = len(keys) / len(sample)
    pure_before = scale * pure_scoring_s(platform.env, sample, args.measure_tasks)
    print(f"pure scoring before the backfill: {pure_before:.1f} s", flush=True)
    with local_platform(platform.env, platform.logs) as servers:
        t0 = time.time()
        code = backfill(instance, keys, servers.url, wait=True, timeout_s=3 * 3600)
        wall = time.time() - t0
    to_last_likelihood = last_likelihood_at(instance, keys) - t0
    load_during = os.getloadavg()[1]  # 5-minute mean, mostly the backfill's time
    print(f"backfill: {to_last_likelihood:.1f} s to the last likelihood", flush=True)
    pure_after = scale * pure_scoring_s(platform.env, sample, args.measure_tasks)
    pure = (pure_before + pure_after) / 2
    statuses: dict[str, int] = {}
    for r in instance.get_runs():
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    refreshes = len(instance.fetch_materializations(dg.AssetKey("model_map"), limit=1000).records)
    locked = sum(
        p.read_text(errors="replace").count("database is locked") for p in platform.logs.iterdir()
    )
    scoring = scoring_runs(instance)
    result = {
        "storage": args.storage,
        "models": args.models,
        "backfill_exit": code,
        "wall_s": round(to_last_likelihood, 1),
        "pure_scoring_s": round(pure, 1),
        "pure_scoring_before_after_s": [round(pure_before, 1), round(pure_after, 1)],
        "pure_sample": len(sample),
        "ratio": round(to_last_likelihood / pure, 2),
        "load_average": [
            round(load_before, 1),
            round(load_during, 1),
            round(os.getloadavg()[0], 1),
        ],
        "benchmark_measure": measure,
        "mlflow": args.mlflow,
        "wall_s_with_map_refresh": round(wall, 1),
        **breakdown(instance, scoring, t0, t0 + to_last_likelihood, len(keys)),
        "pure_s_per_model": round(pure / len(keys), 2),
        "runs": statuses,
        "map_refreshes": refreshes,
        "database_is_locked": locked,
        **run_timings(scoring),
        "folder": str(root),
    }
    print(json.dumps(result, indent=1))
    if args.write and code == 0:
        write_backfill_entry(
            {
                "models": args.models,
                "wall_s": result["wall_s"],
                "pure_scoring_s": result["pure_scoring_s"],
                "pure_scoring_before_after_s": result["pure_scoring_before_after_s"],
                "pure_sample_models": len(sample),
                "ratio": result["ratio"],
                **{
                    k: result[k]
                    for k in (
                        "backfill_to_first_run_s",
                        "runs_s",
                        "in_run_s_per_model",
                        "pure_s_per_model",
                    )
                },
                "ratio_from_first_run": round(result["runs_s"] / result["pure_scoring_s"], 2),
                "load_average": result["load_average"],
                "cpus": os.cpu_count(),
                "storage": args.storage,
                "texts": args.texts,
                "benchmark_measure": measure,
                "mlflow": args.mlflow,
                "models_per_run": MODELS_PER_RUN,
                "command": "python benchmarks/bench_backfill.py --models "
                f"{args.models} --storage {args.storage}"
                + (" --measure-tasks" if args.measure_tasks else "")
                + f" --mlflow {args.mlflow} --texts {args.texts}"
                + (f" --pure-sample {args.pure_sample}" if args.pure_sample else "")
                + " --write",
            },
            # The default corpus keeps the `backfill` entry; another size gets its own.
            "backfill" if args.texts == 40 else f"backfill_{args.texts}_texts",
        )
    instance.dispose()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
