"""Where the full refresh spends its time: each downstream asset in-process, profiled.

    python benchmarks/profile_refresh.py --models 10000 --texts 10000 --root /tmp/prof10k

A working folder (kept, reused by the next call with the same ``--root``) holds a corpus of
``--texts`` texts materialized by the real `corpus` asset, K registered `models` partitions
and K likelihood and benchmark files written by `bench_scale`'s synthetic scorer, exactly as
the scorer writes them (no materialization events: the downstream assets read the files and
the partitions, not the events, so the set-up takes minutes, not the half hour
`bench_scale.py` spends recording 2K events in SQLite). Each asset of ``--assets`` is then
materialized alone with `dg.materialize` under cProfile; the wall time, the process's peak
RSS so far and the functions with the most cumulative time are printed.

This is a developer's tool for finding the slow part; `bench_scale.py` is the measurement
through the real daemon that `scale.json` holds.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import multiprocessing
import os
import pstats
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def _env(root: Path) -> dict:
    return {
        **os.environ,
        "DAGSTER_HOME": str(root / "dagster_home"),
        "MODELMAP_DATA": str(root / "data"),
        "MODELMAP_CACHE": str(root / "cache"),
        "MODELMAP_LOCAL_MODELS": "",
        "MODELMAP_BENCHMARK_MEASURE": "never",
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


_WRITER = None


def _init(root: str, keys, n_bytes, domains, text_ids, n_tokens, corpus_hash) -> None:
    import polars as pl
    from bench_scale import ScoreWriter, SyntheticScorer

    from resources.storage import StorageResource

    global _WRITER
    corpus_df = pl.DataFrame({"text_id": text_ids, "n_bytes": n_tokens * 4})
    _WRITER = ScoreWriter(
        StorageResource(base_dir=str(Path(root) / "data")),
        None,
        SyntheticScorer(keys, n_bytes, domains),
        corpus_df,
        corpus_hash,
    )
    _WRITER.n_tokens = n_tokens


def _write(i: int) -> None:
    _WRITER.write_file(i)


def set_up(root: Path, K: int, N: int, family_size: int, processes: int) -> None:
    import dagster as dg
    from bench_scale import init_mlflow_store, write_corpus_jsonl
    from dagster._core.instance.ref import InstanceRef

    from modelmap_assets.cli.main import materialize_corpus, register
    from resources.settings import build_resources
    from workshop.hub_server import synthetic_keys

    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = _env(root)
    os.environ.update(env)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home)))
    init_mlflow_store(env["MLFLOW_TRACKING_URI"])
    resources = build_resources(env)
    storage = resources["storage"]
    corpus_file = write_corpus_jsonl(root / "texts.jsonl", N)
    materialize_corpus(
        instance, resources, {"source": "jsonl", "path": str(corpus_file), "n_texts": N}
    )
    corpus_df, corpus_meta = storage.read_corpus()
    keys = synthetic_keys(K, family_size)
    register(instance, [k for k, _ in keys])
    t0 = time.perf_counter()
    setup = (
        str(root),
        keys,
        corpus_df["n_bytes"].to_numpy(),
        corpus_df["domain"].to_list(),
        corpus_df["text_id"].to_numpy(),
        corpus_df["n_bytes"].to_numpy() // 4,
        corpus_meta["corpus_hash"],
    )
    with multiprocessing.get_context("spawn").Pool(processes, _init, setup) as pool:
        for n, _ in enumerate(pool.imap_unordered(_write, range(K), chunksize=20), 1):
            if n % 1000 == 0:
                print(f"  {n} models written ({time.perf_counter() - t0:.0f} s)", flush=True)
    (root / "setup.json").write_text(json.dumps({"K": K, "N": N}))


def profile(root: Path, names: list[str], top: int, sort: str) -> list[dict]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    from modelmap_assets.definitions import ASSETS
    from resources.settings import build_resources

    env = _env(root)
    os.environ.update(env)
    instance = dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(root / "dagster_home")))
    resources = build_resources(env)
    by_name = {a.key.to_user_string(): a for a in ASSETS}
    results = []
    for name in names:
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        result = dg.materialize(
            [by_name[name]], instance=instance, resources=resources, raise_on_error=False
        )
        profiler.disable()
        wall = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(sort).print_stats(top)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        print(f"== {name}: {wall:.1f} s, success={result.success}, peak RSS so far {rss:.0f} MB")
        print("\n".join(lines[-top - 1 :]), flush=True)
        results.append({"asset": name, "wall_s": round(wall, 2), "success": result.success})
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--texts", type=int, default=10000)
    ap.add_argument("--family-size", type=int, default=10)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument(
        "--assets",
        default="coordinates,kl_table,model_map,text_selection,regression_report,"
        "leakage_report,lineage_report",
    )
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--sort", default="cumulative")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    done = args.root / "setup.json"
    if not done.exists() or json.loads(done.read_text()) != {"K": args.models, "N": args.texts}:
        t0 = time.perf_counter()
        set_up(args.root, args.models, args.texts, args.family_size, args.processes)
        print(f"set-up in {time.perf_counter() - t0:.0f} s", flush=True)
    results = profile(args.root, [a for a in args.assets.split(",") if a], args.top, args.sort)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
