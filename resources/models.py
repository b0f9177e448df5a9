"""Where a model key's weights come from: a local model folder or the Hub."""

import json
import os
from pathlib import Path

import dagster as dg
from pydantic import Field, field_validator

from modelmap.storage import path_inside, validate_model_key

#: The local models folder under the cache while `local_dirs` is unset.
LOCAL_MODELS_DIR = "local"


class ModelSourceResource(dg.ConfigurableResource):
    """Resolves a `models` partition key to a local folder or a Hub repo id.

    A local folder holds model folders laid out as `<dir>/<org>/<name>/config.json`, and may
    list models with their family and declared base in a `zoo.json` registry (`modelmap zoo`
    writes one); any other key is a Hub repo.
    """

    cache_dir: str = Field(
        default=".cache/modelmap",
        description="modelmap's cache: Hub downloads (`<cache>/hub`) and, unless "
        "`MODELMAP_LOCAL_MODELS` says otherwise, the local models folder (`<cache>/local`)",
    )
    local_dirs: str | None = Field(
        default=None,
        description="folders of local models, `:`-separated (`os.pathsep`); unset: "
        "`<cache>/local`; empty: every key is a Hub repo",
    )

    @field_validator("local_dirs", mode="before")
    @classmethod
    def _join_list(cls, value):
        return os.pathsep.join(map(str, value)) if isinstance(value, list | tuple) else value

    @property
    def folders(self) -> list[Path]:
        """The local model folders, in the order they are searched."""
        if self.local_dirs is None:
            return [Path(self.cache_dir) / LOCAL_MODELS_DIR]
        return [Path(d) for d in self.local_dirs.split(os.pathsep) if d]

    def _registry(self) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        for base in self.folders:
            registry = Path(base) / "zoo.json"
            if registry.exists():
                for entry in json.loads(registry.read_text())["models"]:
                    entries[entry["key"]] = {**entry, "path": str(Path(base) / entry["path"])}
        return entries

    def describe(self, key: str) -> dict:
        """{'key', 'path' (local folder or None for the Hub), 'family', ...} for a model key."""
        validate_model_key(key)
        entry = self._registry().get(key)
        if entry is not None:
            return entry
        for base in self.folders:
            folder = path_inside(Path(base), *key.split("/"))
            if (folder / "config.json").is_file():
                return {"key": key, "path": str(folder), "family": key.split("/")[0]}
        # A Hub model: its family is its organisation until a better label is known.
        return {"key": key, "path": None, "family": key.split("/")[0] if "/" in key else key}
