"""Planted leaks of graded strength, built beside the embedded zoo on demand.

The zoo's own leaked model (`zoo/llama-leaked`: 250 steps at lr 1e-3 on 600 corpus texts) is
heavy, and the paper's rule catches it. These models test the light leaks the paper's rule
misses. Each is the zoo's Llama base trained further, like the zoo's fine-tunes (fresh AdamW,
constant lr, random windows), on one of:

- ``corpus``: every text of the given corpus (a brief leak: a few steps, under one epoch);
- ``quarter``: every fourth corpus text (a partial leak);
- a training domain of the embedded corpus (a domain fine-tune that must *not* be flagged;
  its texts come from the "train" split, like the zoo's fine-tunes).

They declare the zoo's Llama base as their base model. The folder (``<out>/planted/<name>``)
and its registry ``<out>/zoo.json`` have the zoo's layout, so a model source that lists
``<out>`` scores them like zoo models. A build is cached by a hash of the spec, the base
model's weights and the texts; the default zoo is never retrained or changed.

``python -m workshop.leak_zoo --zoo .cache/modelmap/local --out .cache/modelmap/leak_zoo``
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workshop import zoo

KEY_PREFIX = "planted"
CORPUS, QUARTER = "corpus", "quarter"


@dataclass(frozen=True)
class PlantedModel:
    """One model: ``texts`` is ``corpus``, ``quarter`` or a training domain's name."""

    name: str
    texts: str
    steps: int
    lr: float = 3e-4

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}/{self.name}"


@dataclass(frozen=True)
class LeakZooSpec:
    family: str = "llama"
    models: tuple[PlantedModel, ...] = ()
    batch_size: int = 8
    seed: int = 0

    @classmethod
    def test(cls) -> LeakZooSpec:
        """The slow tests' planted models: a brief full leak, a quarter leak, a domain
        fine-tune (the same steps and lr as the zoo's fine-tunes)."""
        return cls(
            models=(
                PlantedModel("llama-leak-all", CORPUS, 30),
                PlantedModel("llama-leak-quarter", QUARTER, 30),
                PlantedModel("llama-ft-wikipedia", "wikipedia", 30),
            )
        )

    @classmethod
    def graded(cls) -> LeakZooSpec:
        """A series of strengths to find the weakest leak each statistic detects."""
        models = [PlantedModel(f"llama-leak-all-{s}", CORPUS, s) for s in (10, 30, 60)]
        models += [PlantedModel(f"llama-leak-quarter-{s}", QUARTER, s) for s in (30, 60)]
        models += [PlantedModel("llama-ft-wikipedia-30", "wikipedia", 30)]
        return cls(models=tuple(models))

    def hash(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode() + b"\0")
    return h.hexdigest()[:16]


def _base_entry(zoo_dir: Path, base_key: str, family: str) -> zoo.ZooModel:
    """The base's registry entry; from its config while the zoo is still training."""
    if (zoo_dir / zoo.REGISTRY_NAME).exists():
        return {m.key: m for m in zoo.load_registry(zoo_dir)}[base_key]
    config = json.loads((zoo_dir / base_key / "config.json").read_text())
    return zoo.ZooModel(
        key=base_key,
        path=base_key,
        family=family,
        architecture=config["model_type"],
        role="base",
        domain=None,
        alpha=None,
        n_params=0,
        context_length=config["max_position_embeddings"],
        vocab_size=config["vocab_size"],
    )


def build_leak_zoo(
    zoo_dir: Path | str,
    out_dir: Path | str,
    corpus_texts: Sequence[str],
    spec: LeakZooSpec | None = None,
    log=print,
    threads: int | None = None,
) -> list[zoo.ZooModel]:
    """Train the planted models from the zoo's base under ``out_dir``; return their entries.

    ``corpus_texts``: the scored corpus's texts in text_id order (what the leaks see).
    ``threads``: torch threads while training (default: the process's torch setting, every
    core unless limited; 1 is faster on a machine whose cores are already busy).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    zoo_dir, out_dir = Path(zoo_dir), Path(out_dir)
    spec = spec or LeakZooSpec.test()
    base_key = f"{zoo.KEY_PREFIX}/{spec.family}-base"
    entry = _base_entry(zoo_dir, base_key, spec.family)
    base_dir = entry.local_path(zoo_dir)
    weights = hashlib.sha256((base_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    build_hash = hashlib.sha256(
        f"{spec.hash()}:{weights}:{_texts_hash(corpus_texts)}".encode()
    ).hexdigest()[:16]
    registry = out_dir / zoo.REGISTRY_NAME
    if registry.exists():
        data = json.loads(registry.read_text())
        models = [zoo.ZooModel(**m) for m in data["models"]]
        if data.get("build_hash") == build_hash and all(
            (m.local_path(out_dir) / "config.json").exists() for m in models
        ):
            log(f"leak zoo: {len(models)} models cached in {out_dir} (build {build_hash})")
            return models

    from modelmap.corpus.build import load_embedded_documents

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    train_texts = zoo._by_domain(load_embedded_documents("train"), 3_000_000)
    by_slug = {zoo.slug(d): d for d in train_texts}
    # The family as the registry recorded it (only its name, architecture and context are used).
    fam = zoo.FamilySpec(
        entry.family, entry.architecture, entry.vocab_size, entry.context_length, 0, 0, 0
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    entries = []
    try:
        for m in spec.models:
            if m.texts == CORPUS:
                texts = list(corpus_texts)
            elif m.texts == QUARTER:
                texts = list(corpus_texts)[::4]
            elif zoo.slug(m.texts) in by_slug:
                texts = train_texts[by_slug[zoo.slug(m.texts)]]
            else:
                raise ValueError(f"planted model {m.name}: no texts named {m.texts!r}")
            streams = zoo._token_streams(tokenizer, {m.texts: texts})
            model = AutoModelForCausalLM.from_pretrained(base_dir)
            loss = zoo.train(
                model,
                streams,
                [m.texts],
                steps=m.steps,
                lr=m.lr,
                warmup=0,
                batch_size=spec.batch_size,
                context=entry.context_length,
                weight_decay=0.01,
                seed=zoo._seed(spec.seed, m.key),
                bf16=True,
                name=m.key,
                log=log,
                cosine=False,
            )
            zoo.save_model_atomic(model, tokenizer, out_dir / m.key)
            role = "leaked" if m.texts in (CORPUS, QUARTER) else "finetune"
            domain = None if role == "leaked" else by_slug[zoo.slug(m.texts)]
            entries.append(
                dataclasses.replace(
                    zoo._entry(m.key, fam, role, domain, None, model), base_model=base_key
                )
            )
            log(f"{m.key}: {m.steps} steps on {len(texts)} {m.texts} texts, loss {loss:.3f}")
    finally:
        torch.set_num_threads(previous)
    zoo._write_registry(
        out_dir,
        {
            "format": zoo.FORMAT_VERSION,
            "build_hash": build_hash,
            "spec": dataclasses.asdict(spec),
            "base": base_key,
            "build_seconds": round(time.time() - t0, 1),
            "models": [dataclasses.asdict(e) for e in entries],
        },
    )
    log(f"leak zoo: {len(entries)} models in {time.time() - t0:.1f}s -> {registry}")
    return entries


def main(argv: Sequence[str] | None = None) -> None:
    from modelmap.corpus.build import build_corpus

    parser = argparse.ArgumentParser(description="Build the planted-leak models.")
    parser.add_argument("--zoo", type=Path, required=True, help="the embedded zoo's folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n-texts", type=int, default=300, help="the corpus size leaked")
    parser.add_argument("--graded", action="store_true", help="the graded series")
    args = parser.parse_args(argv)
    texts = build_corpus("embedded", args.n_texts)["text"].to_list()
    spec = LeakZooSpec.graded() if args.graded else LeakZooSpec.test()
    build_leak_zoo(args.zoo, args.out, texts, spec, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
