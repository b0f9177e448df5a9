"""`hub_models_sensor`: new and updated Hub models become `models` partitions and runs.

Each tick lists the Hub newest first and takes what lies past the cursor:

1. **New models** (by `createdAt`): a model not yet a partition is added to `models` and
   scored, pinned to the sha the listing showed (the models of a tick share runs: a range of
   up to `MODELS_PER_RUN` partitions per run, each model still failing alone); a model scored
   alone is tagged with the base models its card declares (`modelmap/base_model`; the run
   reads the card itself and records them in its metadata).
2. **Updated models** (by `lastModified`): a known model whose sha differs from the one it was
   last scored at (and not already requested) is scored again.

The cursor holds, per listing, the newest time taken and the ids taken at exactly that time,
so a model is neither missed nor repeated across ticks and pages even when several share a
timestamp. Candidates are taken oldest first and the cursor advances only over what was taken,
so the cap per tick delays models but never skips them. On its first tick the sensor looks
back only `initial_lookback_hours`, so turning it on never floods the queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import dagster as dg

from modelmap_assets.partitions import models_partitions
from modelmap_assets.scoring.assets import likelihood
from modelmap_assets.scoring.batches import (
    MODELS_PER_RUN,
    RANGE_END_TAG,
    RANGE_START_TAG,
    contiguous_batches,
    range_tags,
    sha_tags,
)
from modelmap_assets.scoring.benchmarks import benchmark_scores
from modelmap_assets.tags import BASE_MODEL_TAG, REVISION_TAG, SOURCE_TAG
from resources.hub import HubResource, declared_bases


@dataclass
class Watermark:
    """The newest time taken from one listing and the ids taken at exactly that time."""

    time: datetime
    ids: set[str] = field(default_factory=set)

    def is_past(self, when: datetime, repo_id: str) -> bool:
        """True if a model at `when` has not been taken yet."""
        return when > self.time or (when == self.time and repo_id not in self.ids)

    def take(self, when: datetime, repo_id: str) -> None:
        if when > self.time:
            self.time, self.ids = when, {repo_id}
        elif when == self.time:
            self.ids.add(repo_id)

    def to_json(self) -> dict:
        return {"time": self.time.isoformat(), "ids": sorted(self.ids)}

    @classmethod
    def from_json(cls, d: dict) -> Watermark:
        return cls(datetime.fromisoformat(d["time"]), set(d["ids"]))


@dataclass
class HubCursor:
    created: Watermark
    modified: Watermark

    def dumps(self) -> str:
        return json.dumps({"created": self.created.to_json(), "modified": self.modified.to_json()})

    @classmethod
    def loads(cls, cursor: str | None, lookback: timedelta, now: datetime) -> HubCursor:
        if not cursor:
            start = now - lookback
            return cls(Watermark(start), Watermark(start))
        d = json.loads(cursor)
        return cls(Watermark.from_json(d["created"]), Watermark.from_json(d["modified"]))


def _past(listing, mark: Watermark, when: str) -> list:
    """Models of a newest-first listing not yet taken, oldest first; stops at the watermark."""
    found = []
    for m in listing:
        t = getattr(m, when)
        if t is None or t < mark.time:
            break  # newest first: everything after this is older still
        if mark.is_past(t, m.id):
            found.append(m)
    return sorted(found, key=lambda m: (getattr(m, when), m.id))


def scored_revision(instance: dg.DagsterInstance, key: str) -> str | None:
    """The sha `likelihood` was last materialized at for partition `key`, if any."""
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=likelihood.key, asset_partitions=[key]), limit=1
    )
    if not result.records:
        return None
    value = result.records[0].asset_materialization.metadata.get("revision")
    return value.value if value is not None else None


def already_requested(instance: dg.DagsterInstance, key: str, sha: str) -> bool:
    """True if a run of model `key` at `sha` exists (queued, running, done or failed), alone
    or in a batch."""
    if instance.get_run_ids(dg.RunsFilter(tags=sha_tags({key: sha})), limit=1):
        return True
    # Single-model runs requested before batches carried only these two tags.
    runs = instance.get_run_ids(
        dg.RunsFilter(tags={"dagster/partition": key, REVISION_TAG: sha}), limit=1
    )
    return bool(runs)


def run_request(repo_id: str, sha: str, reason: str, bases: list[str] = ()) -> dg.RunRequest:
    """One model alone (run key `<repo id>@<sha>`)."""
    tags = {REVISION_TAG: sha, SOURCE_TAG: reason, **sha_tags({repo_id: sha})}
    if bases:
        tags[BASE_MODEL_TAG] = ",".join(bases)[:1000]
    return dg.RunRequest(run_key=f"{repo_id}@{sha}", partition_key=repo_id, tags=tags)


def batch_requests(
    revisions: dict[str, str],
    order: list[str],
    reason: str,
    max_per_run: int | None = None,
    bases: dict[str, list[str]] | None = None,
) -> list[dg.RunRequest]:
    """Runs scoring the models of `revisions` ({key: sha}), several per run.

    A run covers a range of `models` partitions, so models are grouped as they lie in `order`
    (the partitions' order; newly added keys come last, in the order added). A run's key joins
    its models' `<repo id>@<sha>`: a model at a new sha is a new run key, so it is scored again.
    """
    requests = []
    for keys in contiguous_batches(order, list(revisions), max_per_run or MODELS_PER_RUN):
        if len(keys) == 1:
            bases_of = (bases or {}).get(keys[0], [])
            requests.append(run_request(keys[0], revisions[keys[0]], reason, bases_of))
            continue
        pinned = {k: revisions[k] for k in keys}
        requests.append(
            dg.RunRequest(
                run_key=" ".join(f"{k}@{sha}" for k, sha in pinned.items()),
                tags={**range_tags(keys), **sha_tags(pinned), SOURCE_TAG: reason},
            )
        )
    return requests


def requested_models(request: dg.RunRequest, order: list[str]) -> list[str]:
    """The model keys one of this sensor's run requests scores (`order`: the partitions)."""
    if request.partition_key is not None:
        return [request.partition_key]
    first, last = request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]
    return order[order.index(first) : order.index(last) + 1]


def evaluate_hub(
    context: dg.SensorEvaluationContext, hub: HubResource, now: datetime | None = None
) -> dg.SensorResult:
    """One tick of `hub_models_sensor` (a function so tests can pass `now`)."""
    now = now or datetime.now(UTC)
    cursor = HubCursor.loads(context.cursor, timedelta(hours=hub.initial_lookback_hours), now)
    order = list(context.instance.get_dynamic_partitions(models_partitions.name))
    known = set(order)
    cap = hub.max_models_per_tick
    new_keys: list[str] = []
    new: dict[str, str] = {}  # key -> sha, for new models
    updated: dict[str, str] = {}  # key -> sha, for known models at a new sha
    bases: dict[str, list[str]] = {}  # key -> base models its card declares
    refused: list[str] = []
    delayed = 0

    for m in _past(hub.list_models("created_at"), cursor.created, "created_at"):
        if m.id not in known:
            why = hub.refusal(m.id)
            if why:
                refused.append(f"{m.id} ({why})")
            elif len(new) >= cap:
                delayed += 1
                continue  # neither taken nor after it: the next tick starts here
            else:
                new_keys.append(m.id)
                new[m.id] = m.sha
                bases[m.id] = declared_bases(m)
        if delayed:
            continue
        cursor.created.take(m.created_at, m.id)

    if not delayed:
        for m in _past(hub.list_models("last_modified"), cursor.modified, "last_modified"):
            if m.id in known and m.sha and hub.refusal(m.id) is None:
                stale = scored_revision(context.instance, m.id) != m.sha
                if stale and not already_requested(context.instance, m.id, m.sha):
                    if len(new) + len(updated) >= cap:
                        delayed += 1
                        break
                    updated[m.id] = m.sha
                    bases[m.id] = declared_bases(m)
            cursor.modified.take(m.last_modified, m.id)

    if refused:
        context.log.info(f"hub: refused {len(refused)} models: {'; '.join(refused[:20])}")
    if delayed:
        context.log.info(f"hub: cap of {cap} runs per tick reached; the rest waits a tick")
    partition_requests = [models_partitions.build_add_request(new_keys)] if new_keys else []
    # New keys are added after every known one, in this order: each batch is a range.
    requests = batch_requests(new, order + new_keys, "hub-new", bases=bases)
    requests += batch_requests(updated, order, "hub-update", bases=bases)
    if not requests:
        return dg.SensorResult(
            skip_reason=dg.SkipReason(
                f"no new or updated models on {hub.endpoint} since {cursor.created.time:%c} UTC"
            ),
            cursor=cursor.dumps(),
        )
    context.log.info(
        f"hub: {len(new)} new models, {len(updated)} updated; requesting {len(requests)} runs"
    )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partition_requests,
        cursor=cursor.dumps(),
    )


def build_hub_models_sensor(
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """`hub_models_sensor`, targeting `likelihood` and `benchmark_scores` (several models per
    run, see `modelmap_assets.scoring.batches`)."""

    @dg.sensor(
        name="hub_models_sensor",
        target=dg.AssetSelection.assets(likelihood, benchmark_scores),
        default_status=default_status,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Adds new Hugging Face Hub models to `models` and scores new shas.",
    )
    def hub_models_sensor(context: dg.SensorEvaluationContext, hub: HubResource):
        return evaluate_hub(context, hub)

    return hub_models_sensor


hub_models_sensor = build_hub_models_sensor()
