"""Measure the weakest planted leak each leakage statistic detects (README, "Leakage").

Scores the embedded zoo and the graded planted models (`workshop.leak_zoo.LeakZooSpec.graded`)
on the default 300-text corpus and its 100 twins, measures the three embedded tasks, then
screens the zoo plus *one* planted model at a time (as a single leak would appear in the
world: its relatives are the zoo's models, not other planted ones). Prints a table and writes
``benchmarks/leakage.json``. Per-model scores are cached under ``--work`` (reruns are quick).

    python scripts/measure_leakage.py --zoo $MODELMAP_CACHE/local --work /tmp/leakwork
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap.corpus.build import build_corpus, build_twins
from modelmap.geometry.centering import clip_global, double_centre
from modelmap.geometry.kl import nats_per_text_to_bits_per_byte, two_kl_nats
from modelmap.reports import leakage, leakage_evidence, lineage
from modelmap.reports.tasks import default_tasks, evaluate_tasks
from resources.scorer import ScorerResource
from workshop import leak_zoo, zoo


def score_model(scorer, key, folder, corpus, twins, tasks, work: Path) -> dict:
    cache = work / f"{key.replace('/', '--')}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    loaded = scorer.load(key, str(folder))
    t0 = time.time()
    c = scorer.score(loaded, corpus, log=lambda s: None)
    t1 = time.time()
    t = scorer.score(loaded, twins, log=lambda s: None)
    t2 = time.time()
    results = evaluate_tasks(
        loaded.model, loaded.tokenizer, tasks, context=loaded.context_length, token_budget=2048
    )
    out = {
        "corpus": np.asarray(c.loglik_nats).tolist(),
        "twins": np.asarray(t.loglik_nats).tolist(),
        "tasks": {r.task: r.accuracy for r in results},
        "corpus_s": t1 - t0,
        "twins_s": t2 - t1,
    }
    cache.write_text(json.dumps(out))
    return out


def registry_or_folders(zoo_dir: Path) -> list[zoo.ZooModel]:
    """The zoo's registry; while a zoo is still training (no registry yet), the models whose
    folders exist, described from their names (``--partial``)."""
    if (zoo_dir / zoo.REGISTRY_NAME).exists():
        return [
            dataclasses.replace(m, base_model=m.base_model or zoo.declared_base(m.family, m.role))
            for m in zoo.load_registry(zoo_dir)
        ]
    models = []
    for folder in sorted((zoo_dir / zoo.KEY_PREFIX).iterdir()):
        if not (folder / "model.safetensors").exists():
            continue
        name = folder.name
        family = name.split("-")[0]
        if name.endswith("-base"):
            role, domain = "base", None
        elif "-interp-" in name:
            role, domain = "interpolation", None
        elif name.endswith("-leaked"):
            role, domain = "leaked", None
        else:
            role = "finetune"
            domain = name.split("-ft-", 1)[1].removesuffix("-strong")
        config = json.loads((folder / "config.json").read_text())
        models.append(
            zoo.ZooModel(
                key=f"{zoo.KEY_PREFIX}/{name}",
                path=f"{zoo.KEY_PREFIX}/{name}",
                family=family,
                architecture=config.get("model_type", ""),
                role=role,
                domain=domain,
                alpha=None,
                n_params=0,
                context_length=0,
                vocab_size=config.get("vocab_size", 0),
                base_model=zoo.declared_base(family, role),
            )
        )
    return models


def screen(keys, scores, declared, corpus_df, twins_df, mean_bytes):
    L = np.array([scores[k]["corpus"] for k in keys])
    T = np.array([scores[k]["twins"] for k in keys])
    Q = double_centre(clip_global(L, 2.0)[0])
    check = lineage.check_lineage(Q, keys, declared, mean_bytes)
    links = [
        (r["model"], r["declared_base"])
        for r in check.pairs.iter_rows(named=True)
        if r["within_band"]
    ]
    relatives, sources = leakage_evidence.choose_relatives(Q, keys, links)
    ev = leakage_evidence.gather_evidence(
        keys,
        L,
        corpus_df["n_bytes"].to_numpy(),
        corpus_df["domain"].to_numpy(),
        relatives,
        twin_loglik=T,
        twin_bytes=twins_df["n_bytes"].to_numpy(),
        twin_domains=twins_df["domain"].to_numpy(),
        relatives_source=sources,
    )
    bench = np.array([np.mean(list(scores[k]["tasks"].values())) for k in keys])
    paper = leakage.screen(keys, L.mean(axis=1) / mean_bytes, bench)
    return leakage_evidence.combine(paper.table, ev), check


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n-texts", type=int, default=300)
    parser.add_argument("--n-twins", type=int, default=100)
    parser.add_argument("--score-only", action="store_true", help="score the zoo, then stop")
    parser.add_argument("--planted-only", action="store_true", help="build the planted models")
    parser.add_argument("--reverse", action="store_true", help="score the last models first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "leakage.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    corpus_df = build_corpus("embedded", args.n_texts)
    twins_df = build_twins("embedded", args.n_texts, args.n_twins)
    texts = corpus_df["text"].to_list()
    mean_bytes = float(corpus_df["n_bytes"].mean())
    leak_dir = args.work / "leak_zoo"
    base = registry_or_folders(args.zoo)
    if args.score_only:  # score what exists so far (cached), nothing else
        scorer = ScorerResource(device="cpu", dtype="bfloat16")
        todo = [(m, args.zoo) for m in base]
        if (leak_dir / zoo.REGISTRY_NAME).exists():
            todo += [(m, leak_dir) for m in zoo.load_registry(leak_dir)]
        for m, folder in todo[::-1] if args.reverse else todo:
            score_model(
                scorer,
                m.key,
                m.local_path(folder),
                texts,
                twins_df["text"].to_list(),
                default_tasks(),
                args.work,
            )
            print(f"{m.key}: scored", flush=True)
        return
    planted = leak_zoo.build_leak_zoo(
        args.zoo, leak_dir, texts, leak_zoo.LeakZooSpec.graded(), threads=args.threads
    )
    if args.planted_only:
        return
    scorer = ScorerResource(device="cpu", dtype="bfloat16")
    tasks = default_tasks()
    scores = {}
    for m, folder in [(m, args.zoo) for m in base] + [(m, leak_dir) for m in planted]:
        t0 = time.time()
        scores[m.key] = score_model(
            scorer, m.key, m.local_path(folder), texts, twins_df["text"].to_list(), tasks, args.work
        )
        print(f"{m.key}: scored in {time.time() - t0:.1f}s", flush=True)

    declared = {m.key: [m.base_model] if m.base_model else [] for m in base + planted}
    zoo_keys = [m.key for m in base]
    # The gain each zoo fine-tune makes on its own domain's corpus texts, per byte.
    nb = corpus_df["n_bytes"].to_numpy()
    dom = corpus_df["domain"].to_numpy()

    def gain(key, sel=None):
        b = declared[key][0]
        g = (np.array(scores[key]["corpus"]) - np.array(scores[b]["corpus"])) / nb
        return float(g.mean() if sel is None else g[sel].mean())

    domain_names = {zoo.slug(d): d for d in set(dom)}
    ft_gains = {
        m.key: gain(m.key, dom == domain_names.get(zoo.slug(m.domain), m.domain))
        for m in base + planted
        if m.role == "finetune" and m.domain and zoo.slug(m.domain) in domain_names
    }
    rows = []
    baseline, _ = screen(zoo_keys, scores, declared, corpus_df, twins_df, mean_bytes)
    for m in planted:
        table, check = screen(zoo_keys + [m.key], scores, declared, corpus_df, twins_df, mean_bytes)
        r = table.row(len(zoo_keys), named=True)
        others = table.head(len(zoo_keys))
        spec = next(p for p in leak_zoo.LeakZooSpec.graded().models if p.key == m.key)
        rows.append(
            {
                "model": m.key,
                "texts": spec.texts,
                "steps": spec.steps,
                "mean_gain_on_corpus_nats_per_byte": gain(m.key),
                "paper_z": r["paper_z"],
                "relatives_z": r["relatives_z"],
                "twin_z": r["twin_z"],
                "twin_gap": r["twin_gap"],
                "flag_paper_rule": bool(r["paper_z"] > 3.5),
                "flag_twins": bool(r["twin_gap"] > 0 and r["twin_z"] > 3.5),
                "flag_relatives_alone": bool(r["relatives_gain"] > 0 and r["relatives_z"] > 3.5),
                "flag_combined": bool(r["flagged"]),
                "other_models_flagged": others.filter(others["flagged"])["model"].to_list(),
                "lineage_verdict": check.table.row(len(zoo_keys), named=True)["verdict"],
            }
        )
    # Lineage on the zoo: the true declarations, then a wrong, a missing and an unscored one.
    L = np.array([scores[k]["corpus"] for k in zoo_keys])
    Q = double_centre(clip_global(L, 2.0)[0])
    true_decl = {k: declared[k] for k in zoo_keys}
    true_check = lineage.check_lineage(Q, zoo_keys, true_decl, mean_bytes)
    fts = [m.key for m in base if m.role == "finetune" and not m.key.endswith("-strong")]
    wrong_key = next(k for k in fts if not k.startswith("zoo/llama"))
    # A fine-tune on a domain the strong fine-tune and the series do not share.
    missing_key = next(
        (k for k in fts if k.startswith("zoo/neox-ft-fortunes")),
        next(k for k in fts if k.startswith("zoo/llama") and "bible" not in k),
    )
    planted_decl = {
        **true_decl,
        wrong_key: ["zoo/llama-base"],
        missing_key: [],
        base[0].key: ["EleutherAI/pythia-14m"],
    }
    planted_check = lineage.check_lineage(Q, zoo_keys, planted_decl, mean_bytes)
    pairs = true_check.pairs
    fam = np.array([k.split("/")[1].split("-")[0] for k in zoo_keys])
    lineage_result = {
        "band_bits_per_byte": true_check.band_bits_per_byte,
        "band_source": true_check.band_source,
        "declared_pairs_bits_per_byte": dict(
            zip(pairs["model"], pairs["two_kl_bits_per_byte"], strict=True)
        ),
        "declared_pairs_low_high": {
            m: [lo, hi]
            for m, lo, hi in zip(
                pairs["model"],
                pairs["two_kl_bits_per_byte_low"],
                pairs["two_kl_bits_per_byte_high"],
                strict=True,
            )
        },
        "true_declarations_flagged": true_check.flagged,
        "true_verdicts": dict(
            zip(true_check.table["model"], true_check.table["verdict"], strict=True)
        ),
        "planted": {"wrong": wrong_key, "missing": missing_key, "not_scored": base[0].key},
        "planted_flagged": planted_check.flagged,
        "planted_verdicts": dict(
            zip(planted_check.table["model"], planted_check.table["verdict"], strict=True)
        ),
        "closest_pair_of_different_families_bits_per_byte": float(
            nats_per_text_to_bits_per_byte(
                np.min(np.where(fam[:, None] != fam[None, :], two_kl_nats(Q), np.inf)), mean_bytes
            )
        ),
    }
    result = {
        "zoo": str(args.zoo),
        "zoo_models": zoo_keys,
        "lineage": lineage_result,
        "corpus": {"n_texts": args.n_texts, "n_twins": twins_df.height},
        "zoo_alone_flagged": baseline.filter(baseline["flagged"])["model"].to_list(),
        "zoo_alone_flagged_paper_rule": baseline.filter(baseline["paper_z"] > 3.5)[
            "model"
        ].to_list(),
        "finetune_gain_on_own_domain_nats_per_byte": ft_gains,
        "planted": rows,
        "twin_scoring_cost": float(
            sum(s["twins_s"] for s in scores.values()) / sum(s["corpus_s"] for s in scores.values())
        ),
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "planted"}, indent=1))
    header = "model | texts | steps | gain | paper z | relatives z | twin z | combined | others"
    print(header)
    for r in rows:
        print(
            f"{r['model']} | {r['texts']} | {r['steps']} | "
            f"{r['mean_gain_on_corpus_nats_per_byte']:.4f} | {r['paper_z']:.1f} | "
            f"{r['relatives_z']:.1f} | {r['twin_z']:.1f} | {r['flag_combined']} | "
            f"{r['other_models_flagged']}"
        )


if __name__ == "__main__":
    main()
