"""Where the 2KL estimate is a KL, and the scale bands, measured on the zoo (issue 14).

Scores every zoo model (float32) and derived variants on the embedded corpus, then for pairs
at growing distances compares the map's estimate ``||q_i - q_j||^2 / N`` (bits per byte) with
a KL *sampled* from the models themselves:

- same tokenizer: sequences drawn from p_i, and at every position the exact
  ``KL(p_i(.|x_<t) || p_j(.|x_<t))`` over the vocabulary, summed along the sequence
  (chain rule: the sequence-level KL, without the variance of sampling the next token);
- different tokenizers: sequences drawn from p_i are decoded to text and scored by both
  models with the platform's scoring engine, ``KL(i||j) ~= mean(l_i(x) - l_j(x))``.

Both directions are summed, ``J = KL(i||j) + KL(j||i)``, which is what ``2KL`` stands for near
the diagonal, and divided by the bytes of the sampled text. The scale bands are the
estimates of: the same model in bfloat16 vs float32; Gaussian weight noise at 0.1% and 1% of
each tensor's standard deviation; a 30-step fine-tune vs its base; another base of the same
architecture (bases of two zoos, ``--extra-dir``); another architecture.

    PYTHONPATH=. .venv/bin/python scripts/measure_kl_regime.py \\
        --zoo SMALL_ZOO --extra-dir .cache/modelmap/local/zoo --n-texts 300 \\
        --scores /tmp/zoo_scores.npz --out benchmarks/kl_regime.json

The SmolLM2 family (`workshop.smollm.build_smollm_family`: the real 135M model, its 20-step
fine-tune; the noisy copies are made here again):

    PYTHONPATH=. .venv/bin/python scripts/measure_kl_regime.py \\
        --zoo .cache/modelmap/smollm2 --skip-role noise --n-texts 200 --samples 8 \\
        --scores /tmp/smollm_scores.npz --out benchmarks/kl_regime_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # workshop/ is used from the checkout: it is not installed

from modelmap.corpus.build import build_corpus
from modelmap.geometry.centering import clip_global, double_centre
from modelmap.geometry.intervals import normal_interval, two_kl_standard_errors
from modelmap.geometry.kl import nats_per_text_to_bits_per_byte, two_kl_nats
from modelmap.scoring.engine import score_texts
from modelmap.scoring.loading import load_causal_lm
from workshop.zoo import load_registry

LN2 = math.log(2.0)


@dataclass
class Entry:
    key: str
    path: Path
    role: str
    family: str
    base_model: str | None
    alpha: float | None


def noisy_copy(model, rel_sd: float, seed: int):
    """The model with Gaussian noise of ``rel_sd`` x each tensor's standard deviation added."""
    import copy

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * p.std() * rel_sd)
    return out


def sample_sequences(model, tokenizer, n: int, length: int, seed: int) -> torch.Tensor:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 0
    torch.manual_seed(seed)
    x = torch.full((n, 1), start, dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            x,
            # Explicit: with the pad id set to the start token, generate would otherwise take
            # the start token for padding and mask it out.
            attention_mask=torch.ones_like(x),
            do_sample=True,
            max_new_tokens=length,
            min_new_tokens=length,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            pad_token_id=start,
        )
    return out


def stepwise_kl_nats(model_i, model_j, seqs: torch.Tensor) -> np.ndarray:
    """Per sequence: sum over positions of KL(p_i(.|prefix) || p_j(.|prefix)), nats."""
    with torch.no_grad():
        li = torch.log_softmax(model_i(seqs).logits.float(), dim=-1)
        lj = torch.log_softmax(model_j(seqs).logits.float(), dim=-1)
    kl = (li.exp() * (li - lj)).sum(-1)  # n x T
    return kl[:, :-1].sum(1).double().numpy()  # the last position predicts past the sample


def text_bytes(tokenizer, seqs: torch.Tensor) -> tuple[list[str], np.ndarray]:
    texts = tokenizer.batch_decode(seqs[:, 1:], skip_special_tokens=True)
    return texts, np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)


def sampled_j_bits_per_byte(a, b, n: int, length: int, seed: int) -> dict:
    """J = KL(a||b) + KL(b||a) per byte of sampled text, bits; a, b: (name, model, tokenizer,
    context). Same-tokenizer samples stay inside both contexts."""
    (_, ma, ta, ca), (_, mb, tb, cb) = a, b
    same = ta.get_vocab() == tb.get_vocab()
    parts = {}
    for tag, (m1, t1, c1), (m2, t2, c2) in (
        ("ab", (ma, ta, ca), (mb, tb, cb)),
        ("ba", (mb, tb, cb), (ma, ta, ca)),
    ):
        steps = min(length, (min(c1, c2) if same else c1) - 1)
        seqs = sample_sequences(m1, t1, n, steps, seed)
        texts, nbytes = text_bytes(t1, seqs)
        if same:
            kl = stepwise_kl_nats(m1, m2, seqs)
        else:
            l1 = score_texts(m1, t1, texts, context=c1, token_cache=None).loglik_nats
            l2 = score_texts(m2, t2, texts, context=c2, token_cache=None).loglik_nats
            kl = l1 - l2
        parts[tag] = float(kl.sum() / nbytes.sum() / LN2)
    return {
        "method": "stepwise" if same else "text",
        "kl_ab_bits_per_byte": parts["ab"],
        "kl_ba_bits_per_byte": parts["ba"],
        "j_bits_per_byte": parts["ab"] + parts["ba"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--extra-dir", type=Path, action="append", help="more model folders")
    ap.add_argument("--zoo-prefix", default="small")
    ap.add_argument("--extra-prefix", default="demo")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.001, 0.01])
    ap.add_argument(
        "--skip-role",
        action="append",
        default=[],
        help="registry roles left out (e.g. noise: the SmolLM2 family's own noisy copies, "
        "which --noise makes again)",
    )
    ap.add_argument("--n-texts", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scores", type=Path, default=None, help="cache of the scored matrix (.npz)")
    args = ap.parse_args()
    roles = {m.role for m in load_registry(args.zoo)}
    if unknown := sorted(set(args.skip_role) - roles):
        ap.error(f"--skip-role {', '.join(unknown)}: no such role in {args.zoo} ({sorted(roles)})")
    torch.set_num_threads(2)
    t0 = time.time()
    corpus = build_corpus("embedded", args.n_texts)
    texts = corpus["text"].to_list()
    mean_bytes = float(np.mean([len(t.encode("utf-8")) for t in texts]))

    def renamed(key):  # the registry's zoo/ prefix names this zoo: --zoo-prefix
        return None if key is None else key.replace("zoo/", f"{args.zoo_prefix}/", 1)

    entries = [
        Entry(
            renamed(m.key), m.local_path(args.zoo), m.role, m.family, renamed(m.base_model), m.alpha
        )
        for m in load_registry(args.zoo)
        if m.role not in args.skip_role
    ]
    for folder in args.extra_dir or []:
        # Model folders without a registry (e.g. a second zoo's family): name-{base,ft-*}.
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            fam = sub.name.split("-")[0]
            role = "base" if sub.name.endswith("-base") else "finetune"
            key = f"{args.extra_prefix}/{sub.name}"
            base = f"{args.extra_prefix}/{fam}-base" if role != "base" else None
            entries.append(Entry(key, sub, role, f"{args.extra_prefix}-{fam}", base, None))
    models = {}
    for e in entries:
        models[e.key] = (e, load_causal_lm(e.key, e.path, device="cpu", dtype="float32"))

    # Rows: every model in float32, plus variants of the bases.
    rows: dict[str, object] = {}
    for key, (m, loaded) in models.items():
        rows[key] = (loaded.model, loaded.tokenizer, loaded.context_length)
        if m.role == "base":
            bf16 = load_causal_lm(key, m.path, device="cpu", dtype="bfloat16").model
            rows[f"{key}@bf16"] = (bf16, loaded.tokenizer, loaded.context_length)
            for rel in args.noise:
                rows[f"{key}@noise{rel:g}"] = (
                    noisy_copy(loaded.model, rel, seed=1),
                    loaded.tokenizer,
                    loaded.context_length,
                )
    keys = list(rows)
    cache = {}
    if args.scores and args.scores.exists():
        z = np.load(args.scores, allow_pickle=False)
        cache = {k: z[k] for k in z.files}
    L = np.empty((len(keys), len(texts)))
    for r, key in enumerate(keys):
        if key in cache:
            L[r] = cache[key]
            continue
        model, tok, ctx = rows[key]
        t1 = time.time()
        L[r] = score_texts(model, tok, texts, context=ctx).loglik_nats
        cache[key] = L[r]
        print(f"scored {key} in {time.time() - t1:.1f}s", flush=True)
        if args.scores:  # after every row: a long run keeps what it has scored
            np.savez(args.scores, **cache)

    # The map's estimate: Q from the zoo's own rows (variants join the same matrix).
    Q = double_centre(clip_global(L, 2.0)[0])
    D = two_kl_nats(Q)
    se = two_kl_standard_errors(Q)
    low, high = normal_interval(D, se, 0.95)
    bpb = nats_per_text_to_bits_per_byte(D, mean_bytes)
    at = {k: i for i, k in enumerate(keys)}

    def est(a, b):
        i, j = at[a], at[b]
        return {
            "estimate_bits_per_byte": float(bpb[i, j]),
            "low": float(nats_per_text_to_bits_per_byte(low[i, j], mean_bytes)),
            "high": float(nats_per_text_to_bits_per_byte(high[i, j], mean_bytes)),
        }

    bases = [k for k, (m, _) in models.items() if m.role == "base"]
    arch = {k: models[k][1].model.config.model_type for k in bases}
    bands: dict[str, list] = {"bf16_vs_f32": []}
    bands |= {f"noise_{rel:g}_sd": [] for rel in args.noise}
    bands |= {"finetune_vs_base": [], "another_base_same_arch": [], "another_architecture": []}
    for b in bases:
        bands["bf16_vs_f32"].append(est(b, f"{b}@bf16") | {"pair": [b, f"{b}@bf16"]})
        for rel in args.noise:
            pair = [b, f"{b}@noise{rel:g}"]
            bands[f"noise_{rel:g}_sd"].append(est(*pair) | {"pair": pair})
    for key, (m, _) in models.items():
        if m.role in ("finetune", "interpolation", "leaked") and m.base_model in models:
            band = "finetune_vs_base" if m.role == "finetune" else "other_derived"
            pair = [key, m.base_model]
            bands.setdefault(band, []).append(est(*pair) | {"pair": pair})
    for i, a in enumerate(bases):
        for b in bases[i + 1 :]:
            band = "another_base_same_arch" if arch[a] == arch[b] else "another_architecture"
            bands[band].append(est(a, b) | {"pair": [a, b]})
    bands = {k: v for k, v in bands.items() if v}

    # Pairs at growing distances for the sampled KL: every band's pairs.
    pairs = [e["pair"] for v in bands.values() for e in v]
    comparison = []
    for a, b in pairs:
        t1 = time.time()
        sa = (a, *rows[a])
        sb = (b, *rows[b])
        sampled = sampled_j_bits_per_byte(sa, sb, args.samples, args.length, seed=0)
        row = {"pair": [a, b], **est(a, b), **sampled}
        row["ratio_estimate_over_sampled"] = row["estimate_bits_per_byte"] / max(
            row["j_bits_per_byte"], 1e-12
        )
        comparison.append(row)
        print(
            f"{a} vs {b}: estimate {row['estimate_bits_per_byte']:.4g} bits/byte, sampled J "
            f"{row['j_bits_per_byte']:.4g} ({sampled['method']}), {time.time() - t1:.1f}s",
            flush=True,
        )
    summary = {
        name: {
            "n": len(v),
            "min": min(e["estimate_bits_per_byte"] for e in v),
            "max": max(e["estimate_bits_per_byte"] for e in v),
        }
        for name, v in bands.items()
        if v
    }
    out = {
        "n_texts": len(texts),
        "mean_bytes_per_text": mean_bytes,
        "models": keys,
        "bands": bands,
        "band_summary": summary,
        "comparison": comparison,
        "cross_entropy_bits_per_byte": {
            k: float(-L[at[k]].mean() / mean_bytes / LN2) for k in keys
        },
        "wall_s": time.time() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
