"""Importing a published log-likelihood matrix as `models` partitions, without scoring.

`import_published_matrix` reads the paper's `raw_log-likelihood_1018.pkl` (or a file of the
same shape) with the restricted unpickler of `modelmap.published`, checks it against the
current corpus, writes one likelihood file per model (origin `imported`, the file's name and
SHA-256, n_tokens null), adds the models as `models` partitions and records each one's
`likelihood` materialization in the instance (a run-less event, so the UI shows them
materialized and automation refreshes the map). A model scored here later is placed among
them like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np

from modelmap.likelihoods import (
    ORIGIN_IMPORTED,
    ORIGIN_SCORED,
    likelihood_frame,
    read_metadata,
    write_likelihood_file,
)
from modelmap.published import check_corpus, model_keys, read_published_matrix
from modelmap_assets.partitions import models_partitions
from resources.storage import StorageResource

DATA_VERSION_TAG = "dagster/data_version"


@dataclass
class ImportReport:
    file: str
    sha256: str
    n_texts: int
    imported: list[str] = field(default_factory=list)  # keys written and recorded
    unchanged: list[str] = field(default_factory=list)  # already imported from this file
    kept_scored: list[str] = field(default_factory=list)  # scored here: not overwritten
    renamed: dict[str, str] = field(default_factory=dict)  # published name -> key


def import_published_matrix(
    instance: dg.DagsterInstance,
    storage: StorageResource,
    path: str | Path,
    corpus_check: bool = True,
    log: Callable[[str], None] = print,
) -> ImportReport:
    """Import every model of the matrix at `path` on the current corpus (see module doc).

    `corpus_check`: the corpus must be `texts-10k-pile.jsonl` (source jsonl); the number of
    texts must match in any case. A model already scored by this platform keeps its scores;
    one imported before from a file with the same SHA-256 is left as it is.
    """
    matrix = read_published_matrix(path)
    corpus_df, corpus_meta = storage.read_corpus()
    check_corpus(
        matrix,
        corpus_df.height,
        corpus_meta.get("source"),
        corpus_meta.get("path"),
        paper_file=corpus_check,
    )
    corpus_hash = corpus_meta["corpus_hash"]
    text_ids = corpus_df["text_id"].to_numpy()
    keys = model_keys(matrix.names)
    report = ImportReport(matrix.path.name, matrix.sha256, corpus_df.height)
    report.renamed = {n: k for n, k in keys.items() if n != k}
    known = set(instance.get_dynamic_partitions(models_partitions.name))
    new_keys = [k for k in keys.values() if k not in known]
    if new_keys:
        instance.add_dynamic_partitions(models_partitions.name, new_keys)
    for row, name in enumerate(matrix.names):
        key = keys[name]
        target = storage.likelihood_path(key)
        if target.exists():
            previous = read_metadata(target)
            if previous.get("origin", ORIGIN_SCORED) != ORIGIN_IMPORTED:
                report.kept_scored.append(key)
                continue
            same = previous.get("import_sha256") == matrix.sha256
            if same and previous.get("corpus_hash") == corpus_hash:
                report.unchanged.append(key)
                continue
        loglik = matrix.loglik_nats[row]
        meta = {
            "key": key,
            "family": key.split("/")[0],
            "origin": ORIGIN_IMPORTED,
            "import_file": matrix.path.name,
            "import_sha256": matrix.sha256,
            "import_name": name,
            "corpus_hash": corpus_hash,
            "mean_loglik_nats": float(np.mean(loglik)),
        }
        written = write_likelihood_file(target, [likelihood_frame(text_ids, loglik)], meta)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key="likelihood",
                partition=key,
                description=f"imported from {matrix.path.name} (not scored here)",
                metadata={
                    **{k: v for k, v in meta.items() if k != "key"},
                    "n_texts": len(text_ids),
                    "path": dg.MetadataValue.path(str(written)),
                },
                tags={DATA_VERSION_TAG: f"imported-{matrix.sha256[:16]}-{corpus_hash[:16]}"},
            )
        )
        report.imported.append(key)
    log(
        f"{matrix.path.name} (sha256 {matrix.sha256[:12]}): {matrix.shape[0]} models x "
        f"{matrix.shape[1]} texts; imported {len(report.imported)}, unchanged "
        f"{len(report.unchanged)}, kept as scored here {len(report.kept_scored)}"
        + (f"; {len(report.renamed)} names made into partition keys" if report.renamed else "")
    )
    return report
