"""`modelmap` command line: register models, materialize the map, launch backfills.

Runs against the Dagster instance in $DAGSTER_HOME, so every run shows in the UI. `modelmap
zoo`, `modelmap demo` and `modelmap backfill zoo` use the stand-ins of a source checkout (the
zoo trainer, the local Hub): they load them through `workshop_entry` alone.
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from modelmap.corpus.build import SOURCES
from modelmap.storage import validate_model_key
from modelmap_assets.cli.arguments import (
    FORCE_HELP,
    OneLineParser,
    check_corpus_source,
    check_scored,
    model_key,
    positive_int,
)
from modelmap_assets.cli.workshop_entry import workshop_commands
from modelmap_assets.definitions import ASSETS, DOWNSTREAM, PER_MODEL
from modelmap_assets.instance.inprocess import materialize_here
from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.batches import contiguous_batches, range_tags
from modelmap_assets.scoring.scored import imported, unscored
from resources.settings import build_resources, command_line_default


def cache_dir() -> Path:
    """modelmap's cache (`MODELMAP_CACHE`, the `model_source` resource's `cache_dir`)."""
    return Path(build_resources(os.environ)["model_source"].cache_dir).resolve()


def register(instance: dg.DagsterInstance, keys: list[str]) -> list[str]:
    """Add model keys to the `models` partitions; returns the keys that were new."""
    for key in keys:
        validate_model_key(key)
    known = set(instance.get_dynamic_partitions(models_partitions.name))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(models_partitions.name, new)
    return new


def materialize_corpus(instance: dg.DagsterInstance, resources: dict, corpus_config: dict) -> None:
    run = materialize_here(
        ASSETS,
        selection=["corpus"],
        instance=instance,
        resources=resources,
        run_config={"ops": {"corpus": {"config": corpus_config}}},
    )
    print(f"corpus: run {run.run_id} succeeded")


def materialize_all(
    instance: dg.DagsterInstance,
    corpus_config: dict,
    keys: list[str] | None = None,
    resources: dict | None = None,
    force: bool = False,
) -> dict:
    """Materialize corpus, every model partition (batches of models per run), then the map
    and reports.

    A model that fails is reported and left out; the map is built from the rest. Models
    imported from a published matrix are not scored unless `keys` names them; models already
    scored at the same sha, corpus and settings are not scored again unless `force`.
    """
    resources = resources or build_resources(os.environ)
    materialize_corpus(instance, resources, corpus_config)
    order = list(instance.get_dynamic_partitions(models_partitions.name))
    keys = keys or [k for k in order if not imported(resources["storage"], k)]
    keys, skipped = unscored(keys, resources, force)
    failed, done = {}, 0
    for batch in contiguous_batches(order, keys):
        t0 = time.perf_counter()
        result = materialize_here(
            ASSETS,
            selection=PER_MODEL,
            **({"partition_key": batch[0]} if len(batch) == 1 else {"tags": range_tags(batch)}),
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        written = {
            (e.asset_key.to_user_string(), e.partition)
            for e in result.get_asset_materialization_events()
        }
        seconds = (time.perf_counter() - t0) / len(batch)
        for key in batch:
            done += 1
            ok = all((a.key.to_user_string(), key) in written for a in PER_MODEL)
            if not ok:
                failed[key] = model_failure_message(result, key)
            print(f"[{done}/{len(keys)}] {key}: {'ok' if ok else 'FAILED'} (~{seconds:.1f} s)")
            if not ok:
                print(f"    {failed[key]}")
    maps = materialize_here(
        ASSETS,
        selection=DOWNSTREAM,
        instance=instance,
        resources=resources,
    )
    print(f"map: run {maps.run_id} succeeded")
    return {"failed": failed, "skipped": skipped, "storage": resources["storage"].root}


def backfill(
    instance: dg.DagsterInstance,
    keys: list[str],
    url: str,
    wait: bool,
    timeout_s: float = 3600,
    force: bool = False,
) -> int:
    """Register `keys` and launch one asset backfill of their per-model assets, less those
    already scored at the same sha, corpus and settings unless `force`. The map and reports
    are not in the backfill: declarative automation refreshes them once the batch is scored.
    With `wait`, return when the backfill has ended and that refresh is done."""
    from modelmap_assets.cli.backfill import BackfillError, launch_backfill, wait_for_backfill

    if keys == ["zoo"]:
        keys = workshop_commands("backfill zoo").zoo_keys()
    new = register(instance, keys)
    print(f"registered {len(new)} new of {len(keys)} model keys")
    keys, skipped = unscored(keys, build_resources(os.environ), force)
    if not keys:
        return 0
    assets = [a.key.to_user_string() for a in PER_MODEL]
    started = time.time()
    deadline = started + timeout_s
    try:
        backfill_id = launch_backfill(url, keys, assets)
        print(f"backfill {backfill_id}: {len(keys)} models; {url}/runs/b/{backfill_id}")
        if not wait:
            return 0
        status = wait_for_backfill(url, backfill_id, timeout_s)
    except BackfillError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if status not in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED"):
        return 1
    last_scored = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("likelihood"), asset_partitions=keys, after_timestamp=started
        ),
        limit=1,
        ascending=False,
    ).records
    if not last_scored:
        print("no model of the batch was scored: nothing to refresh", file=sys.stderr)
        return 1
    # The refresh that includes the batch comes after its last model was scored.
    stale = wait_for_refresh(instance, last_scored[0].timestamp, deadline - time.time())
    if not stale:
        print(f"map and reports refreshed ({time.time() - started:.0f} s after the launch)")
    else:
        print(
            f"error: {', '.join(stale)} not refreshed within {timeout_s:.0f} s of the launch; is "
            "the `modelmap_automation` sensor running (Automation in the UI)?",
            file=sys.stderr,
        )
        return 1
    return 0 if status != "COMPLETED_FAILED" else 1


def wait_for_refresh(
    instance: dg.DagsterInstance,
    since: float,
    timeout_s: float,
    poll_s: float = 5,
    assets: Sequence = tuple(DOWNSTREAM),
) -> list[str]:
    """Wait until `assets` (by default every asset over all models; automation refreshes them
    together) have been materialized after `since`; returns those still not refreshed at
    `timeout_s`."""
    deadline = time.time() + max(timeout_s, 0)
    while True:
        stale = [
            a.key.to_user_string()
            for a in assets
            if not (event := instance.get_latest_materialization_event(a.key))
            or event.timestamp < since
        ]
        if not stale or time.time() >= deadline:
            return stale
        time.sleep(poll_s)


def import_matrix(
    instance: dg.DagsterInstance, path: str, corpus_check: bool, corpus_file: str | None = None
) -> int:
    """`modelmap import-matrix`: 0 when imported, 1 with the reason when refused."""
    from modelmap.published import PublishedMatrixError, UnsafePickleError, read_published_matrix
    from modelmap_assets.scoring.imports import import_published_matrix

    resources = build_resources(os.environ)
    storage = resources["storage"]
    try:
        if corpus_file:
            n_texts = read_published_matrix(path).shape[1]
            config = {
                "source": "jsonl",
                "path": str(Path(corpus_file).resolve()),
                "n_texts": n_texts,
            }
            materialize_corpus(instance, resources, config)
        report = import_published_matrix(instance, storage, path, corpus_check=corpus_check)
    except (PublishedMatrixError, UnsafePickleError, FileNotFoundError) as exc:
        print(f"import-matrix: {exc}", file=sys.stderr)
        return 1
    for name, key in list(report.renamed.items())[:20]:
        print(f"  {name!r} -> partition {key}")
    print(
        "the map refreshes by declarative automation (make ui); score a model of your own "
        "with `modelmap register KEY` and a backfill, or `modelmap materialize` with the same "
        "corpus settings (imported models are never scored)"
    )
    return 0


def model_failure_message(result: dg.ExecuteInProcessResult, key: str) -> str:
    """Why model `key` failed in a run (of one model or a batch)."""
    message = failure_message(result)
    lines = [line.removeprefix("- ") for line in message.splitlines()]
    return next((line for line in lines if line.startswith(f"model {key}:")), message)


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The message of a failed run's first step failure (what the UI shows)."""
    for event in result.all_events:
        if event.is_step_failure:
            data = event.step_failure_data
            if data.user_failure_data and data.user_failure_data.description:
                return data.user_failure_data.description
            return data.error.message.strip() if data.error else "unknown error"
    return "the run failed before its step started"


def print_neighbours(key: str, k: int, as_json: bool) -> int:
    """`modelmap neighbours KEY`: place the model against the current map and print it."""
    import json

    from modelmap.geometry.neighbours import PlacementError, place

    try:
        placed = place(build_resources(os.environ)["storage"].root, key, k)
    except PlacementError as exc:
        print(f"modelmap neighbours: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(
            json.dumps(
                {
                    "model": key,
                    "map_x": placed.x,
                    "map_y": placed.y,
                    "placed_among": placed.among,
                    "on_map": placed.in_map,
                    "neighbours": placed.neighbours.drop("model").to_dicts(),
                }
            )
        )
        return 0
    where = "no map yet" if placed.x is None else f"({placed.x:.3f}, {placed.y:.3f})"
    state = "on the map" if placed.in_map else "placed since the last map refresh"
    print(f"{key}: {state}, among {placed.among} models; map position {where}")
    print(f"{'rank':>4}  {'2KL bits/byte':>13}  {'2KL nats':>9}  neighbour")
    for r in placed.neighbours.iter_rows(named=True):
        print(
            f"{r['rank']:>4}  {r['two_kl_bits_per_byte']:>13.4f}  {r['two_kl_nats']:>9.3f}  "
            f"{r['neighbour']}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="modelmap", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    zoo = sub.add_parser(
        "zoo", help="train the embedded model zoo into the local models folder and register it"
    )
    zoo.add_argument("--small", action="store_true", help="a tiny zoo for quick checks")
    zoo.add_argument("--force", action="store_true", help="retrain even if cached")
    reg = sub.add_parser("register", help="add model keys to the `models` partitions")
    reg.add_argument("keys", nargs="+", type=model_key)
    back = sub.add_parser(
        "backfill", help="register model keys and launch their backfill on the webserver"
    )
    back.add_argument(
        "keys", nargs="+", type=model_key, help="model keys (org/name), or 'zoo' for the zoo"
    )
    back.add_argument(
        "--url",
        default=command_line_default("MODELMAP_WEBSERVER"),
        help="the Dagster webserver (`make ui`)",
    )
    back.add_argument(
        "--wait",
        action="store_true",
        help="wait until the backfill ends and automation has refreshed the map and reports",
    )
    back.add_argument("--force", action="store_true", help=FORCE_HELP)
    near = sub.add_parser(
        "neighbours",
        help="a model's nearest mapped models (2KL) and map position, without a map refresh",
    )
    near.add_argument("key", type=model_key, help="a scored model (org/name)")
    near.add_argument("-k", type=positive_int, default=10, help="neighbours to list (>= 1)")
    near.add_argument("--json", action="store_true", help="print JSON instead of a table")
    imp = sub.add_parser(
        "import-matrix",
        help="add the models of a published log-likelihood matrix (the paper's "
        "raw_log-likelihood_1018.pkl) as `models` partitions, without scoring them",
    )
    imp.add_argument("path", help="the pickle: {model name: vector of N log-likelihoods}")
    imp.add_argument(
        "--corpus",
        default=None,
        help="texts-10k-pile.jsonl: materialize the corpus from it first (N = the matrix's)",
    )
    imp.add_argument(
        "--corpus-check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="require the current corpus to be texts-10k-pile.jsonl (default); the number of "
        "texts must match either way",
    )
    mat = sub.add_parser("materialize", help="materialize corpus, every model and the map")
    demo = sub.add_parser(
        "demo", help="zoo on a local Hub, found by the sensor, scored and mapped automatically"
    )
    for p in (mat, demo):
        p.add_argument("--source", default="embedded", choices=SOURCES)
        p.add_argument("--path", default=None, help="the corpus file or folder")
        p.add_argument("--n-texts", type=positive_int, default=1000)
    mat.add_argument("--force", action="store_true", help=FORCE_HELP)
    demo.add_argument("--small", action="store_true", help="stop after the small zoo's first map")
    demo.add_argument(
        "--no-smollm", action="store_true", help="leave out SmolLM2 (~6 min per model on CPU)"
    )
    demo.add_argument(
        "--smollm-family",
        action="store_true",
        help="also the three models derived from SmolLM2 (noise 0.1%%, 1%%, a fine-tune)",
    )
    demo.add_argument("--port", type=int, default=3000, help="the Dagster UI's port")
    args = parser.parse_args(argv)

    if args.command == "neighbours":
        check_scored(near, args.key)
        return print_neighbours(args.key, args.k, args.json)
    if args.command in ("materialize", "demo"):
        check_corpus_source(sub.choices[args.command], args.source, args.path)
    instance = dg.DagsterInstance.get()
    if args.command == "zoo":
        workshop_commands("zoo").zoo(instance, args.small, args.force)
        return 0
    if args.command == "register":
        new = register(instance, args.keys)
        print(f"registered {len(new)} new of {len(args.keys)} keys")
        return 0
    if args.command == "backfill":
        return backfill(instance, args.keys, args.url, args.wait, force=args.force)
    if args.command == "import-matrix":
        return import_matrix(instance, args.path, args.corpus_check, args.corpus)
    corpus_config = {"source": args.source, "path": args.path, "n_texts": args.n_texts}
    t0 = time.perf_counter()
    if args.command == "demo":
        outcome = workshop_commands("demo").demo(
            corpus_config, args.port, args.small, args.no_smollm, args.smollm_family
        )
    else:
        outcome = materialize_all(instance, corpus_config, force=args.force)
    root = outcome["storage"]
    print(f"\nmodelmap finished in {time.perf_counter() - t0:.0f} s")
    if outcome["failed"]:
        print(f"failed models (left out of the map): {', '.join(outcome['failed'])}")
    print(f"the map:        {root / 'model_map' / 'map.png'}")
    print(f"interactive:    {root / 'model_map' / 'map.html'}")
    print(f"KL neighbours:  {root / 'kl_table' / 'neighbours.parquet'}")
    print(f"regression:     {root / 'regression_report'} (scatter.png, table.parquet)")
    print(f"leakage:        {root / 'leakage_report' / 'leakage.png'}")
    print(f"lineage:        {root / 'lineage_report' / 'findings.txt'} (lineage.png)")
    print("MLflow:         make mlflow  (runs, artifacts, the registered predictor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
