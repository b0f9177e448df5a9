"""The Hugging Face Hub: which models to watch, what to refuse, and downloads pinned to a sha.

Every call passes `endpoint=` and `token=` explicitly, so the resource's settings win over
whatever `HF_ENDPOINT` held when huggingface_hub was imported. The token is configuration only:
it is never logged and never written to metadata.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator

from modelmap.scoring.loading import SCORING_FILES, ModelLoadError
from modelmap.storage import InvalidModelKey, validate_model_key

# Properties the sensor needs per listed model (the Hub omits sha/lastModified otherwise).
LIST_EXPAND = [
    "createdAt",
    "lastModified",
    "sha",
    "gated",
    "private",
    "tags",
    "pipeline_tag",
    "library_name",
    "cardData",  # the card's `base_model:` (the Hub does not list `baseModels`)
]


def hub_error_message(exc: Exception, revision: str | None = None) -> str:
    """One line saying why the Hub refused, from huggingface_hub's typed errors."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(exc, "response", None), "status_code", None)
    # Order matters: GatedRepoError and RevisionNotFoundError subclass RepositoryNotFoundError.
    if isinstance(exc, GatedRepoError):
        return (
            f"gated repo, access refused ({status}): accept its terms on the Hub and set "
            "HF_TOKEN to a token with access"
        )
    if isinstance(exc, RevisionNotFoundError):
        return f"revision {revision or 'main'} not found on the Hub (404; the repo changed?)"
    if isinstance(exc, RepositoryNotFoundError):
        return f"repo not found on the Hub ({status or 404}): deleted, renamed or private"
    if isinstance(exc, RemoteEntryNotFoundError):
        return f"a file is missing from the repo (404): {exc}".splitlines()[0]
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return f"access refused by the Hub ({status}): check HF_TOKEN's permissions"
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    return f"Hub request failed: {type(exc).__name__}: {first_line}"


def _comma_list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


class HubResource(dg.ConfigurableResource):
    """The Hub to watch (endpoint, token), the query, and the limits on what is scored.

    List settings are comma-separated strings (so an environment variable binds to them);
    a Python list is accepted too and joined.
    """

    endpoint: str = Field(
        default="https://huggingface.co",
        description="the Hugging Face Hub to watch and download from",
    )
    token: str | None = Field(default=None, description="Hub token for gated or private models")
    authors: str = Field(
        default="", description="organisations or users to watch, comma-separated; empty: all"
    )
    search: str | None = Field(default=None, description="only repo ids containing this text")
    tags: list[str] = Field(default=[], description="tags every model must carry")
    pipeline_tag: str | None = "text-generation"
    library: str | None = "transformers"
    max_parameters: int | None = Field(
        default=None,
        description="refuse larger models (counted from safetensors headers); none: no cap",
    )
    max_models_per_tick: int = Field(default=5, description="most runs one sensor tick requests")
    initial_lookback_hours: int = Field(
        default=24, description="on its first tick the sensor takes models this recent only"
    )
    allow: str = Field(
        default="", description="repo-id patterns (fnmatch, comma-separated) to score; empty: any"
    )
    deny: str = Field(
        default="", description="repo-id patterns (fnmatch, comma-separated) never scored"
    )
    trust_remote_code_allow: str = Field(
        default="",
        description="repo ids (comma-separated) allowed to run their own code; off for others",
    )
    cache_dir: str | None = Field(
        default=".cache/modelmap",
        description="modelmap's cache of rebuildable files: the zoo, Hub downloads "
        "(`<cache>/hub`), the SmolLM2 family",
    )

    @field_validator("authors", "allow", "deny", "trust_remote_code_allow", mode="before")
    @classmethod
    def _join_lists(cls, value):
        return ",".join(value) if isinstance(value, list | tuple) else value

    @property
    def author_list(self) -> list[str]:
        return _comma_list(self.authors)

    @property
    def allow_list(self) -> list[str]:
        return _comma_list(self.allow)

    @property
    def deny_list(self) -> list[str]:
        return _comma_list(self.deny)

    @property
    def download_dir(self) -> str | None:
        """Where snapshots go: `<cache_dir>/hub`, or huggingface_hub's own cache (HF_HOME)."""
        return str(Path(self.cache_dir) / "hub") if self.cache_dir else None

    # -- the client -----------------------------------------------------------------------
    def api(self):
        from huggingface_hub import HfApi

        # token=False: never fall back to a token stored on the machine behind our back.
        return HfApi(endpoint=self.endpoint.rstrip("/"), token=self.token or False)

    # -- what to watch --------------------------------------------------------------------
    def list_models(self, sort: str = "created_at") -> Iterator:
        """Models matching the query, newest first (`created_at` or `last_modified`), lazily.

        The client follows the server's `Link` pages as the iterator is consumed, so a caller
        that stops early fetches only the pages it read.
        """
        filters = [*self.tags, *([self.library] if self.library else [])]
        authors = self.author_list or [None]
        if len(authors) > 1:
            # One listing per author, merged newest first (the Hub takes one author per query).
            import heapq

            key = "created_at" if sort == "created_at" else "last_modified"
            streams = [self._list(a, filters, sort) for a in authors]
            yield from heapq.merge(*streams, key=lambda m: getattr(m, key), reverse=True)
        else:
            yield from self._list(authors[0], filters, sort)

    def _list(self, author: str | None, filters: list[str], sort: str) -> Iterator:
        return self.api().list_models(
            author=author,
            search=self.search,
            filter=filters or None,
            pipeline_tag=self.pipeline_tag,
            sort=sort,
            expand=LIST_EXPAND,
        )

    def refusal(self, repo_id: str) -> str | None:
        """Why the operator's lists or the key rules refuse `repo_id`, or None if accepted."""
        try:
            validate_model_key(repo_id)
        except InvalidModelKey as exc:
            return str(exc)
        if any(fnmatch.fnmatchcase(repo_id, p) for p in self.deny_list):
            return "on the deny list"
        if self.allow_list and not any(fnmatch.fnmatchcase(repo_id, p) for p in self.allow_list):
            return "not on the allow list"
        return None

    def trusts_remote_code(self, repo_id: str) -> bool:
        return repo_id in _comma_list(self.trust_remote_code_allow)

    # -- fetching one model ---------------------------------------------------------------
    def parameter_count(self, repo_id: str, revision: str | None = None) -> int | None:
        """Parameters from the safetensors headers (a few KB of range reads, no weights)."""
        from huggingface_hub.errors import NotASafetensorsRepoError

        try:
            meta = self.api().get_safetensors_metadata(repo_id, revision=revision)
        except NotASafetensorsRepoError:
            return None
        return int(sum(meta.parameter_count.values()))

    def fetch(self, repo_id: str, revision: str | None = None) -> tuple[Path, str, dict]:
        """Download what scoring needs of `repo_id` at `revision` (the sha the sensor saw).

        Checks access, weights and size before the weights are downloaded. Returns
        (snapshot folder, sha, card) where card is {"family", "base_models"} read from the
        repo's tags and card data at that sha. Raises `ModelLoadError` naming the model and
        the cause.
        """
        from huggingface_hub import snapshot_download

        try:
            info = self.api().model_info(repo_id, revision=revision)
            siblings = [s.rfilename for s in info.siblings or []]
            if not any(name.endswith(".safetensors") for name in siblings):
                raise ModelLoadError(
                    f"model {repo_id}: no weights in safetensors format in the repo "
                    f"(files: {', '.join(siblings[:8]) or 'none'}); pickle weights are not loaded"
                )
            if self.max_parameters is not None:
                n = self.parameter_count(repo_id, info.sha)
                if n is not None and n > self.max_parameters:
                    raise ModelLoadError(
                        f"model {repo_id}: too large: {n:,} parameters, more than the limit "
                        f"of {self.max_parameters:,}"
                    )
            folder = snapshot_download(
                repo_id,
                revision=info.sha,
                endpoint=self.endpoint.rstrip("/"),
                token=self.token or False,
                cache_dir=self.download_dir,
                # An allow-listed repo's own code comes too, at the same pinned sha.
                allow_patterns=SCORING_FILES
                + (["*.py"] if self.trusts_remote_code(repo_id) else []),
            )
        except ModelLoadError:
            raise
        except Exception as exc:  # the client's typed errors, worded for the UI
            raise ModelLoadError(f"model {repo_id}: {hub_error_message(exc, revision)}") from exc
        card = {
            "family": family_from_tags(repo_id, info.tags or []),
            "base_models": declared_bases(info),
        }
        return Path(folder), info.sha, card


def declared_bases(info) -> list[str]:
    """The base models a Hub model declares, from a huggingface_hub `ModelInfo`.

    In order, without repeats: the card's `base_model` (a string or a list), the API's
    `baseModels` (`{"relation": "finetune", "models": [{"id": ...}]}`, returned by
    `model_info(..., expand=["baseModels"])`), and `base_model:[relation:]<id>` tags, which
    the Hub derives from the card.
    """
    found: list[str] = []

    def add(value) -> None:
        if isinstance(value, str) and value.strip() and value.strip() not in found:
            found.append(value.strip())

    card = getattr(info, "card_data", None)
    declared = card.get("base_model") if card is not None else None
    for value in declared if isinstance(declared, list) else [declared]:
        add(value)
    api = getattr(info, "base_models", None)
    if isinstance(api, dict):
        for model in api.get("models") or []:
            add(model.get("id") if isinstance(model, dict) else model)
    elif isinstance(api, list):
        for model in api:
            add(model.get("id") if isinstance(model, dict) else model)
    for tag in getattr(info, "tags", None) or []:
        if tag.startswith("base_model:"):
            add(tag.removeprefix("base_model:").split(":")[-1])
    return found


def family_from_tags(repo_id: str, tags: list[str]) -> str:
    """A model's family for the map: a `family:X` tag, else its base model, else its org.

    The Hub marks fine-tunes, merges and quantisations with `base_model:...` tags; the base
    model's id names the family those derived models share.
    """
    for tag in tags:
        if tag.startswith("family:"):
            return tag.removeprefix("family:")
    for tag in tags:
        if tag.startswith("base_model:"):
            return tag.rsplit(":", 1)[-1]
    return repo_id.split("/")[0]
