"""`modelmap demo`: the path a deployment takes, with the real daemon, watched in the UI.

1. A code server, `dagster-webserver` and `modelmap-daemon` (Dagster's daemon) start on the
   instance in $DAGSTER_HOME (`workshop.platform`; the UI's address is printed first), a local
   Hub-compatible server starts, and the corpus is materialized (the only asset built by hand).
2. A small zoo (seconds of training) is published to the local Hub and `hub_models_sensor` is
   turned on: the daemon's sensor finds the models and launches runs of several models each,
   and declarative automation refreshes the map once they are scored: the first map.
3. The full zoo (`ZooSpec.compact`: 18 models, three architectures) is trained and
   published, then SmolLM2-135M-Instruct: the sensor finds them on its next ticks and the
   map grows.
4. When the map holds every published model, the sensor is turned back off, the webserver and
   daemon stop, and `make ui` shows every run (launched by the daemon), asset and map.

The stand-ins (the zoo trainer, the local Hub, the SmolLM2 builder, the process starter) come
from `workshop/`; of the product this module uses the public entry points alone (the definitions
and the command line's functions), and the product reaches it through `workshop/commands.py`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg

from modelmap_assets.cli.backfill import set_sensor
from modelmap_assets.cli.main import cache_dir, materialize_corpus, wait_for_refresh
from modelmap_assets.definitions import DOWNSTREAM, build_resources

#: The dynamic partitions the sensor adds models to (a contract of the code location).
MODELS_PARTITIONS = "models"
#: The assets of the map alone, without the reports.
MAP_ASSETS = ("coordinates", "kl_table", "model_map")

# The SmolLM2 models the demo scores by default. Each 135M-parameter model takes about eight
# minutes to score (1,000 texts, their 100 twins and the benchmark tasks) on two CPU cores,
# so the three derived models (noise 0.1% and 1%, a Bible
# fine-tune) would take the demo past 20 minutes: `--smollm-family` adds them.
SMOLLM_DEFAULT = ("smollm2/135m-instruct",)
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


class Clock:
    """Prints lines prefixed with the time since the demo started."""

    def __init__(self):
        self.t0 = time.monotonic()

    def __call__(self, message: str) -> None:
        elapsed = time.monotonic() - self.t0
        print(f"[{int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", flush=True)

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.t0


def model_outcomes(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, str]:
    """'scored', 'failed' or 'pending' for each key, from the instance (what the UI shows).

    A model that fails in a batch is run again alone (`batch_retry_sensor`); it has failed
    when its own run (tagged with its partition) has failed and is not to be retried."""
    scored = instance.get_materialized_partitions(dg.AssetKey("likelihood"))
    out = {}
    for key in keys:
        if key in scored:
            out[key] = "scored"
            continue
        runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}), limit=5)
        ended = runs and all(r.status in DONE for r in runs)
        out[key] = (
            "failed" if ended and runs[0].status != dg.DagsterRunStatus.SUCCESS else "pending"
        )
    return out


def wait_for_models(
    instance: dg.DagsterInstance,
    keys: Sequence[str],
    log: Callable[[str], None],
    timeout_s: float,
    poll_s: float = 5,
) -> dict[str, str]:
    """Wait until each model is scored or has failed (the sensor adds it, the daemon runs it);
    returns each key's outcome."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        outcomes = model_outcomes(instance, keys)
        counts = tuple(sum(v == s for v in outcomes.values()) for s in ("scored", "failed"))
        if counts != last:
            known = set(instance.get_dynamic_partitions(MODELS_PARTITIONS))
            found = sum(k in known for k in keys)
            log(f"{found}/{len(keys)} found by the sensor, {counts[0]} scored, {counts[1]} failed")
            last = counts
        if "pending" not in outcomes.values():
            return outcomes
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"models still pending after {timeout_s:.0f} s: "
                + ", ".join(k for k, v in outcomes.items() if v == "pending")
            )
        time.sleep(poll_s)


def wait_for_map(
    instance: dg.DagsterInstance,
    keys: Sequence[str],
    data: Path,
    timeout_s: float,
    map_only: bool = False,
) -> int:
    """Wait until automation has refreshed the map after the last of `keys` was scored (with
    `map_only`, `coordinates`, `kl_table` and `model_map`; else the reports too, which also
    wait for benchmark scores in progress); returns the number of models on the map."""
    import polars as pl

    last = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("likelihood"), asset_partitions=list(keys)),
        limit=1,
        ascending=False,
    ).records
    since = last[0].timestamp if last else 0.0
    assets = [a for a in DOWNSTREAM if not map_only or a.key.to_user_string() in MAP_ASSETS]
    stale = wait_for_refresh(instance, since, timeout_s, poll_s=2, assets=assets)
    if stale:
        raise TimeoutError(f"{', '.join(stale)} not refreshed within {timeout_s:.0f} s")
    return pl.read_parquet(data / "model_map" / "map.parquet").height


def run_demo(
    corpus_config: dict,
    smollm: Sequence[str] = SMOLLM_DEFAULT,
    port: int = 3000,
    small_only: bool = False,
) -> dict:
    """Run the demo (module docstring); returns {'failed': {key: why}, 'storage': data dir}."""
    from workshop.hub_server import HubServer, publish_zoo
    from workshop.platform import LocalPlatform
    from workshop.zoo import COMPACT_ZOO_DIR, ZooSpec, build_zoo

    log = Clock()
    if port_in_use(port):
        raise SystemExit(
            f"port {port} is in use (is `make ui` running?): stop it, or pass --port to the demo"
        )
    cache = cache_dir()
    instance = dg.DagsterInstance.get()
    home = Path(instance.root_directory)
    hub_root = cache / "hub_repos"
    failed: dict[str, str] = {}
    with HubServer(hub_root) as hub:
        # Every model comes from the Hub, as in a deployment: no local model folders. The
        # sensor takes a whole published batch in one tick, and the map refreshes after the
        # scores land (not on the hourly schedule meant for large maps).
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "MODELMAP_LOCAL_MODELS": "",
            "MODELMAP_HUB_MAX_PER_TICK": "100",
            "MODELMAP_MAP_REFRESH": "eager",
            # A demo watches models arrive: list the Hub and evaluate automation often.
            "MODELMAP_HUB_POLL_SECONDS": "10",
            "MODELMAP_AUTOMATION_SECONDS": "10",
        }
        resources = build_resources(env)
        data = Path(resources["storage"].base_dir).resolve()
        # Not $DAGSTER_HOME/logs: Dagster moves that folder away (its telemetry queue).
        servers = home / "servers"
        platform = LocalPlatform(env, servers, port=port)
        log(f"Dagster UI: {platform.url}  (watch the runs, the assets and the map grow)")
        log(f"local Hub: {hub.url}; code server, daemon and webserver logs: {servers}")
        # The servers start in their own processes while this one builds the corpus and
        # trains the small zoo.
        platform.start(wait=False)
        try:
            materialize_corpus(instance, resources, corpus_config)
            small = cache / "zoo-small"
            build_zoo(small, spec=ZooSpec.small(), log=lambda s: None)
            platform.wait_until_up()

            def small_zoo() -> list[str]:
                return publish_zoo(hub_root, small, org="tiny")

            def full_zoo() -> list[str]:
                # The compact zoo: the full-size zoo's 18 members at a fraction of its
                # training (2 minutes against 7.5 on two cores); the tests' zoo, same cache.
                log("training the full zoo (the compact one: about two minutes on two cores)")
                folder = cache / COMPACT_ZOO_DIR
                build_zoo(folder, spec=ZooSpec.compact(), log=lambda s: None)
                return publish_zoo(hub_root, folder)

            stages = [("small zoo", small_zoo)]
            if not small_only:
                stages.append(("full zoo", full_zoo))
            if smollm and not small_only:
                stages.append(("SmolLM2", lambda: publish_smollm(hub_root, cache, smollm)))

            def show_map(i: int, scored: list[str], map_only: bool = False) -> None:
                n = wait_for_map(instance, scored, data, 600, map_only) if scored else 0
                what = "first map" if i == 0 else "map"
                log(f"{what}: {n} models ({data / 'model_map' / 'map.html'})")

            deferred = None
            for i, (name, publish) in enumerate(stages):
                keys = publish()
                log(f"{name}: published {len(keys)} models to the local Hub")
                if i == 0:
                    set_sensor(platform.url, "hub_models_sensor", running=True)
                    log("hub_models_sensor turned on (Automation in the UI)")
                if deferred is not None:  # its refresh overlaps these models' first runs
                    # The map alone: the reports wait for these models' benchmark scores.
                    show_map(*deferred, map_only=True)
                    deferred = None
                outcomes = wait_for_models(instance, keys, log, timeout_s=3600)
                failed |= {k: "see its run in the UI" for k, v in outcomes.items() if v == "failed"}
                scored = [k for k, v in outcomes.items() if v == "scored"]
                # The first map is shown at once; a later one is awaited after the next stage
                # is published (when that is quick: not the zoo's minutes of training), so the
                # daemon scores the next models while the map refreshes.
                if 0 < i < len(stages) - 1:
                    deferred = (i, scored)
                else:
                    show_map(i, scored)
        finally:
            try:
                set_sensor(platform.url, "hub_models_sensor", running=False)
            except Exception as exc:  # the webserver may already be gone
                log(f"could not turn hub_models_sensor off: {exc}")
            platform.stop()
    log("demo finished: `make ui` shows every run, asset and the map")
    return {"failed": failed, "storage": data}


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def publish_smollm(hub_root: Path, cache: Path, keys: Sequence[str]) -> list[str]:
    from workshop.hub_server import publish, publish_zoo
    from workshop.smollm import BASE_KEY, FAMILY, build_smollm_family, smollm2_folder

    if set(keys) <= {BASE_KEY}:
        # The real model alone (the default): its folder is published as it is, without
        # building the three derived from it (two noisy copies and a 135M fine-tune: minutes).
        publish(hub_root, BASE_KEY, smollm2_folder(cache), tags=[f"family:{FAMILY}", "role:base"])
        return [BASE_KEY]
    family = build_smollm_family(cache, log=lambda s: None)
    return publish_zoo(hub_root, family, only=set(keys))
