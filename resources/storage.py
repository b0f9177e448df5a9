"""Where modelmap's outputs live: one folder per asset under a base directory."""

import json
import shutil
import time
import uuid
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from modelmap.likelihoods import write_likelihood_file
from modelmap.storage import (
    filename_to_key,
    fsync_path,
    key_to_filename,
    path_inside,
    read_parquet_metadata,
    write_parquet,
    write_text,
)

LIKELIHOOD_SUFFIX = ".parquet"


class StorageResource(dg.ConfigurableResource):
    """Files of every asset under `base_dir` (Parquet and .npy, written atomically)."""

    base_dir: str = Field(default="data", description="outputs of every asset, one folder each")
    stale_after_hours: float = Field(
        default=24.0,
        description="unfinished outputs (`.v-*` folders, temporaries of another host) older "
        "than this are removed, never while a run of their asset is in progress",
    )

    @property
    def root(self) -> Path:
        return Path(self.base_dir).resolve()

    # corpus -----------------------------------------------------------------------------
    @property
    def corpus_path(self) -> Path:
        return self.root / "corpus" / "corpus.parquet"

    def write_corpus(self, df: pl.DataFrame, metadata: dict) -> Path:
        return write_parquet(df, self.corpus_path, metadata)

    def read_corpus(self) -> tuple[pl.DataFrame, dict]:
        if not self.corpus_path.exists():
            raise FileNotFoundError(
                f"no corpus at {self.corpus_path}: materialize the `corpus` asset first"
            )
        return pl.read_parquet(self.corpus_path), read_parquet_metadata(self.corpus_path)

    @property
    def twins_path(self) -> Path:
        return self.root / "corpus" / "twins.parquet"

    def write_twins(self, df: pl.DataFrame, metadata: dict) -> Path:
        """Held-out twin texts (the corpus table's schema), never part of L or Q."""
        return write_parquet(df, self.twins_path, metadata)

    def read_twins(self, corpus_hash: str) -> tuple[pl.DataFrame, dict] | None:
        """The twin texts set aside with the corpus `corpus_hash`; None if there are none."""
        if not self.twins_path.exists():
            return None
        meta = read_parquet_metadata(self.twins_path)
        if meta.get("corpus_hash") != corpus_hash or not meta.get("n_twins"):
            return None
        return pl.read_parquet(self.twins_path), meta

    # one file per model: likelihood, benchmark_scores -----------------------------------
    def model_file(self, asset: str, key: str) -> Path:
        return path_inside(self.root, asset, key_to_filename(key, LIKELIHOOD_SUFFIX))

    def model_files(self, asset: str, keys: list[str]) -> dict[str, Path]:
        """`model_file` of many keys, the folder resolved once (a valid key's file name is
        flat, so it cannot leave the folder; resolving each path cost ~0.4 ms)."""
        folder = path_inside(self.root, asset)
        return {k: folder / key_to_filename(k, LIKELIHOOD_SUFFIX) for k in keys}

    def model_file_keys(self, asset: str) -> list[str]:
        folder = self.root / asset
        if not folder.exists():
            return []
        return sorted(
            filename_to_key(p.name, LIKELIHOOD_SUFFIX)
            for p in folder.glob(f"*{LIKELIHOOD_SUFFIX}")
            if not p.name.startswith(".")
        )

    def likelihood_path(self, key: str) -> Path:
        return self.model_file("likelihood", key)

    def write_likelihood(self, key: str, df: pl.DataFrame, metadata: dict) -> Path:
        """One model's rows in the format of `modelmap.likelihoods` (every split in `df`)."""
        return write_likelihood_file(self.likelihood_path(key), [df], metadata)

    def likelihood_keys(self) -> list[str]:
        return self.model_file_keys("likelihood")

    def benchmark_path(self, key: str) -> Path:
        return self.model_file("benchmark_scores", key)

    # versioned folders for multi-file outputs (coordinates) -------------------------------
    def new_version_dir(self, asset: str, others_in_progress: bool = True) -> Path:
        """A fresh folder to fill; `publish_version` makes it current in one atomic step.

        Unfinished folders of killed runs (`.v-*`) older than `stale_after_hours` are removed
        first, unless `others_in_progress` (another run of `asset` may still be filling one).
        """
        if not others_in_progress:
            self.remove_unfinished_versions(asset)
        path = self.root / asset / f".v-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        return path

    def remove_unfinished_versions(self, asset: str, now: float | None = None) -> list[Path]:
        """Remove `.v-*` folders of `asset` whose newest file is older than
        `stale_after_hours` (call only when no run of `asset` is in progress)."""
        now = time.time() if now is None else now
        folder, removed = self.root / asset, []
        for version in folder.glob(".v-*") if folder.exists() else []:
            newest = max((p.stat().st_mtime for p in [version, *version.rglob("*")]), default=0.0)
            if now - newest > self.stale_after_hours * 3600:
                shutil.rmtree(version, ignore_errors=True)
                removed.append(version)
        return removed

    def publish_version(self, asset: str, version_dir: Path, keep: int = 2) -> Path:
        final = version_dir.parent / version_dir.name.lstrip(".")
        for path in version_dir.rglob("*"):  # durable before it becomes current
            if path.is_file():
                fsync_path(path)
        version_dir.rename(final)
        fsync_path(final.parent)
        write_text(json.dumps({"current": final.name}), self.root / asset / "CURRENT.json")
        self._prune(asset, keep, final)
        return final

    def current_version_dir(self, asset: str) -> Path:
        pointer = self.root / asset / "CURRENT.json"
        if not pointer.exists():
            raise FileNotFoundError(
                f"no `{asset}` output under {pointer.parent}: materialize it first"
            )
        name = json.loads(pointer.read_text())["current"]
        return self.root / asset / name

    def _prune(self, asset: str, keep: int, current: Path) -> None:
        versions = sorted(
            (p for p in (self.root / asset).glob("v-*") if p.is_dir() and p != current),
            key=lambda p: p.stat().st_mtime,
        )
        for old in versions[: max(0, len(versions) - (keep - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    def asset_dir(self, asset: str) -> Path:
        path = self.root / asset
        path.mkdir(parents=True, exist_ok=True)
        return path
