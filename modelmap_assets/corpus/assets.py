"""The `corpus` asset: the fixed set of texts every model is scored on."""

import dagster as dg
import polars as pl
from pydantic import Field

from modelmap.corpus.build import build_corpus, build_twins, corpus_hash, default_n_twins
from resources.storage import StorageResource


class CorpusConfig(dg.Config):
    source: str = Field(
        default="embedded",
        description="embedded (offline default), jsonl (texts-10k-pile.jsonl) or folder",
    )
    path: str | None = Field(default=None, description="the JSONL file or text folder")
    n_texts: int = Field(default=2000, description="N, the number of texts")
    seed: int = Field(default=42, description="seed of the chunk sample (paper: 42)")
    n_twins: int | None = Field(
        default=None,
        description="held-out twin texts set aside for the leakage screen (scored beside the "
        "corpus, never in L or Q; scoring costs n_twins/N more); null: N/10, at least 100; "
        "0: none",
    )


@dg.asset(kinds={"polars"}, group_name="modelmap")
def corpus(
    context: dg.AssetExecutionContext, config: CorpusConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """N text chunks (<= 1,024 UTF-8 bytes, > 256 bytes), sampled with a fixed seed.

    Every downstream asset records this corpus's content hash.
    """
    df = build_corpus(config.source, config.n_texts, path=config.path, seed=config.seed)
    digest = corpus_hash(df)
    domains = df.group_by("domain").len().sort("domain")
    counts = dict(zip(domains["domain"].to_list(), domains["len"].to_list(), strict=True))
    mean_bytes = float(df["n_bytes"].mean())
    meta = {
        "corpus_hash": digest,
        "n_texts": df.height,
        "mean_bytes": mean_bytes,
        "domains": counts,
        "source": config.source,
        "path": config.path,
        "seed": config.seed,
    }
    path = storage.write_corpus(df, meta)
    n_twins = default_n_twins(df.height) if config.n_twins is None else config.n_twins
    twins = build_twins(config.source, config.n_texts, n_twins, path=config.path, seed=config.seed)
    twins_hash = corpus_hash(twins)
    storage.write_twins(
        twins, {"twins_hash": twins_hash, "corpus_hash": digest, "n_twins": twins.height}
    )
    context.log.info(
        f"corpus: {df.height} texts from {len(counts)} domains, hash {digest[:12]}; "
        f"{twins.height} held-out twin texts"
    )
    return dg.MaterializeResult(
        metadata={
            "N": df.height,
            "corpus_hash": digest,
            "n_twins": twins.height,
            "twins_hash": twins_hash,
            "mean_bytes_per_text": mean_bytes,
            "domains": dg.MetadataValue.json(counts),
            "source": config.source,
            "path": dg.MetadataValue.path(str(path)),
            "preview": dg.MetadataValue.md(_preview(df)),
        },
        data_version=dg.DataVersion(digest),
    )


def _preview(df: pl.DataFrame, rows: int = 5) -> str:
    lines = ["| text_id | domain | n_bytes | text |", "| --- | --- | --- | --- |"]
    for r in df.head(rows).iter_rows(named=True):
        snippet = r["text"][:80].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['text_id']} | {r['domain']} | {r['n_bytes']} | {snippet} |")
    return "\n".join(lines)
