"""Several models per run, each model's outcome its own.

A run of the per-model assets covers a range of `models` partitions (a backfill with the
assets' `BackfillPolicy.multi_run`, or a ranged run request of `hub_models_sensor`), so a
batch pays for one run process, not one per model. Dagster records a step's outcome once for
the whole range, so the assets report each model themselves: every model that succeeds gets
its own `AssetMaterialization` (partition = its key) as soon as it is written, and a model
that fails is remembered and the step fails at the end, naming each failed model and its
cause. The UI then shows the written models materialized and the failed ones failed (a
partition is failed when its last planned materialization has none after it in a failed
run). `batch_retry_sensor` then runs each failed model of a batch alone, so its own run
fails (or, for a passing fault, succeeds) with its own cause.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg

# Models scored per run by a backfill (UI or `modelmap backfill`) or a sensor tick. A run costs
# its process start, imports, pool wait and corpus read (measured 30-70 s on 2 loaded cores), so
# bigger batches share that among more models; each model still shows as it is written.
MODELS_PER_RUN = 25

BATCH_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=MODELS_PER_RUN)

# Per model of a run: `modelmap.sha/<40 hex>` = the key to download at that sha. (One tag per
# model, keyed by the sha so the sensor can find "a run of this model at this sha" by tag.)
SHA_TAG_PREFIX = "modelmap.sha/"
# Tags Dagster puts on a run of a partition range.
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
# Set on a run that retries one model of a failed batch alone: the batch run's id.
RETRY_OF_TAG = "modelmap/retry_of_batch"


def sha_tags(revisions: Mapping[str, str]) -> dict[str, str]:
    """Run tags pinning each model of a run to a Hub sha: {key: sha} -> {tag: key}."""
    return {f"{SHA_TAG_PREFIX}{sha}": key for key, sha in revisions.items() if sha}


def requested_revisions(tags: Mapping[str, str]) -> dict[str, str]:
    """{key: sha} pinned by a run's tags (the inverse of `sha_tags`)."""
    return {
        key: tag.removeprefix(SHA_TAG_PREFIX)
        for tag, key in tags.items()
        if tag.startswith(SHA_TAG_PREFIX)
    }


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """Tags that make one run cover the partitions `keys[0]..keys[-1]` (in partition order)."""
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


def contiguous_batches(
    order: Sequence[str], selected: Sequence[str], max_per_run: int = MODELS_PER_RUN
) -> list[list[str]]:
    """`selected` keys cut into runs that are ranges of `order` (the partitions' order).

    A range run covers every partition between its ends, so a batch holds only keys that are
    next to each other in `order`, at most `max_per_run` of them; the batches keep `order`.
    """
    wanted, batches, current = set(selected), [], []
    for key in order:
        if key in wanted and len(current) < max_per_run:
            current.append(key)
            continue
        if current:
            batches.append(current)
        current = [key] if key in wanted else []
    if current:
        batches.append(current)
    return batches


class BatchFailures:
    """The models of a step that failed, and why; raised once, after the others are written."""

    def __init__(self, keys: Sequence[str]):
        self.keys = list(keys)
        self.causes: dict[str, dg.Failure] = {}

    def add(self, key: str, failure: dg.Failure, log) -> None:
        self.causes[key] = failure
        if len(self.keys) > 1:
            log.error(f"{failure.description} (the other models of this run go on)")

    def raise_if_any(self) -> None:
        """A single model fails as before; a batch fails naming every failed model."""
        if not self.causes:
            return
        if len(self.keys) == 1:
            raise self.causes[self.keys[0]]
        n_ok = len(self.keys) - len(self.causes)
        lines = "\n".join(f"- {f.description}" for f in self.causes.values())
        raise dg.Failure(
            description=(
                f"{len(self.causes)} of {len(self.keys)} models failed ({n_ok} written):\n{lines}"
            ),
            metadata={"failed_models": dg.MetadataValue.json(sorted(self.causes))},
            allow_retries=False,
        )
