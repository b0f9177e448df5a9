"""Where a model key's weights come from: a local model folder (the zoo) or the Hub."""

import json
from pathlib import Path

import dagster as dg

from modelmap.storage import path_inside, validate_model_key


class ModelSourceResource(dg.ConfigurableResource):
    """Resolves a `models` partition key to a local folder or a Hub repo id.

    `local_dirs` are folders that hold a `zoo.json` registry (written by `modelmap zoo`) or
    model folders laid out as `<dir>/<org>/<name>/config.json`; any other key is a Hub repo.
    """

    local_dirs: list[str] = []

    def _registry(self) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        for base in self.local_dirs:
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
        for base in self.local_dirs:
            folder = path_inside(Path(base), *key.split("/"))
            if (folder / "config.json").is_file():
                return {"key": key, "path": str(folder), "family": key.split("/")[0]}
        # A Hub model: its family is its organisation until a better label is known.
        return {"key": key, "path": None, "family": key.split("/")[0] if "/" in key else key}
