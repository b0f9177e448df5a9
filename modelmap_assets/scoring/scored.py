"""Models already scored at the sha, corpus and settings a run would score them with: what
`modelmap materialize` and `modelmap backfill` leave out unless `--force`.

The decision itself is `modelmap.likelihoods.is_current`; this module gathers what a run
would use: the model's revision, the current corpus (and its twins), the scorer's settings.
"""

from pathlib import Path

from modelmap.likelihoods import ORIGIN_IMPORTED, TEXT_SET_ALL, is_current, read_metadata
from modelmap.scoring.loading import ModelLoadError, folder_revision, resolve_device, resolve_dtype
from modelmap.storage import InvalidModelKey, read_parquet_metadata
from resources.hub import HubResource
from resources.models import ModelSourceResource
from resources.scorer import ScorerResource
from resources.storage import StorageResource

SKIPPED_LINE = (
    "skipped {n} models already scored at the same sha, corpus and settings; --force re-scores them"
)


def scorer_settings(scorer: ScorerResource) -> dict:
    """The settings a model's scores depend on, as its likelihood file records them: the
    dtype asked for (resolved for the device; a model retried in float32 still records the
    dtype asked for), the sliding-window stride and the context cap."""
    try:
        dtype = str(resolve_dtype(scorer.dtype, resolve_device(scorer.device)))
    except (ValueError, ModelLoadError):
        dtype = scorer.dtype  # an unknown setting fails each model with its reason
    return {
        "scorer_dtype": dtype.removeprefix("torch."),
        "scorer_stride": scorer.stride,
        "scorer_max_context": scorer.max_context,
    }


def hub_sha(hub: HubResource, key: str) -> str | None:
    """The sha of Hub model `key` at main, as a run without a pinned sha fetches it; None
    when the Hub cannot say (unreachable, refused, unknown repo)."""
    try:
        return hub.api().model_info(key).sha
    except Exception:  # any failure: the run scores the model and reports the cause
        return None


def run_revision(key: str, model_source: ModelSourceResource, hub: HubResource) -> str | None:
    """The revision a run would score `key` at: a local folder's content hash (what loading
    records), a Hub model's sha at main; None when it cannot be known."""
    try:
        folder = model_source.describe(key)["path"]
    except InvalidModelKey:
        return None
    if folder is None:
        return hub_sha(hub, key)
    try:
        return folder_revision(Path(folder))
    except OSError:
        return None


def already_scored(keys: list[str], resources: dict) -> list[str]:
    """The keys whose likelihood file is current for a run of `likelihood` (every corpus
    text) with `resources`: same revision, corpus, twin texts and scoring settings."""
    storage: StorageResource = resources["storage"]
    if not storage.corpus_path.exists():
        return []
    corpus_hash = read_parquet_metadata(storage.corpus_path).get("corpus_hash")
    twins = storage.read_twins(corpus_hash)
    settings = {
        "text_set": TEXT_SET_ALL,
        "selection_hash": None,
        "twins_hash": None if twins is None else twins[1]["twins_hash"],
        **scorer_settings(resources["scorer"]),
    }
    hub = resources["hub"].process_config_and_initialize()  # its EnvVar token resolved
    current = []
    for key in keys:
        try:
            path = storage.likelihood_path(key)
        except InvalidModelKey:
            continue  # it fails its own partition with the reason
        if not path.exists():
            continue
        revision = run_revision(key, resources["model_source"], hub)
        if is_current(path, revision, corpus_hash, settings):
            current.append(key)
    return current


def unscored(keys: list[str], resources: dict, force: bool = False) -> tuple[list[str], list[str]]:
    """(`keys` to score, keys left out as `already_scored`); says so in one line when any
    are left out. With `force`, every key is scored."""
    skipped = [] if force else already_scored(keys, resources)
    if skipped:
        print(SKIPPED_LINE.format(n=len(skipped)))
    return [k for k in keys if k not in set(skipped)], skipped


def imported(storage: StorageResource, key: str) -> bool:
    """Whether `key`'s scores were imported from a published matrix (never scored here)."""
    try:
        path = storage.likelihood_path(key)
    except InvalidModelKey:
        return False  # not imported: it fails its own partition with the reason
    return path.exists() and read_metadata(path).get("origin") == ORIGIN_IMPORTED
