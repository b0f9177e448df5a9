"""An embedded zoo of small causal language models, trained on CPU in a few minutes.

The map needs models with a known genealogy to be checked against: families (one base model
trained on all training domains mixed, plus fine-tunes of that base on single domains) and a
weight-interpolation series between a base and one of its fine-tunes. Each family has its own
architecture (GPT-2, Llama, GPT-NeoX), its own byte-level BPE tokenizer, its own size and its
own context length, so that everything the scorer has to handle for real Hub models (BOS or no
BOS, texts longer than the context, different vocabularies) is exercised by the zoo.

Each model is an ordinary Hugging Face folder (config.json, model.safetensors, tokenizer files)
that ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load. The
folders live at ``<out_dir>/<key>`` where a key looks like a Hub repo id (``zoo/gpt2-base``),
and ``<out_dir>/zoo.json`` lists them. The registry is written last and records a hash of the
spec and of the training text, so a second build with the same inputs returns at once.

Why fine-tunes stay near their own family: fine-tuning must move a model far less than its
base training did (as on the Hub). Measured here: bases trained ~600 steps, fine-tunes ~30
steps at lr 3e-4 keep every fine-tune's nearest neighbour inside its family; much weaker bases
or stronger fine-tunes let fine-tunes on the same domain from different families attract each
other.

Run ``python -m workshop.zoo --out DIR`` to build it (~5 min on two idle cores, more if shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

REGISTRY_NAME = "zoo.json"
#: The compact zoo's folder under the cache: the demo's and the tests' zoo (one training).
COMPACT_ZOO_DIR = "zoo-compact"
LEAK_DOMAIN = "corpus"
KEY_PREFIX = "zoo"
# Bump when the build code changes in a way that changes the models for the same spec.
FORMAT_VERSION = 1

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Specification


@dataclass(frozen=True)
class FamilySpec:
    """One family: an architecture, a tokenizer, a size, and how its members are trained."""

    name: str  # key prefix, e.g. "gpt2" -> zoo/gpt2-base
    architecture: str  # "gpt2" | "llama" | "gpt_neox"
    vocab_size: int
    context_length: int
    n_layer: int
    d_model: int
    n_head: int
    n_finetunes: int = 3  # fine-tunes on the first n of the chosen domains


@dataclass(frozen=True)
class InterpolationSpec:
    """A series theta(a) = (1 - a) theta_base + a theta_ft inside one family.

    The fine-tune endpoint is trained longer than the ordinary fine-tunes so that the series
    spans a distance on the map that is large against numerical noise.
    """

    family: str
    steps: int
    lr: float
    alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)


@dataclass(frozen=True)
class LeakSpec:
    """A planted leaked model: the family's base trained further on texts of the scored corpus.

    The texts are the first ``n_texts`` of the default embedded corpus sample, so every default
    corpus (any size, seed 42) starts with them. Screening must flag this model: its
    likelihood on the corpus is far higher than its benchmark scores explain.
    """

    family: str
    n_texts: int
    steps: int
    lr: float


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines the zoo; its hash decides whether a cached build is reused."""

    families: tuple[FamilySpec, ...]
    interpolation: InterpolationSpec | None
    leak: LeakSpec | None = None
    base_steps: int = 600
    base_lr: float = 2e-3
    base_warmup: int = 40
    finetune_steps: int = 30
    finetune_lr: float = 3e-4
    batch_size: int = 8
    weight_decay: float = 0.01
    # Domains to fine-tune on, in order of preference; missing ones are replaced by the
    # largest remaining training domains so the zoo builds on any corpus.
    finetune_domains: tuple[str, ...] = ("bible", "python code", "fortunes")
    # Caps keep tokenizer training and tokenisation fast whatever the corpus size.
    max_chars_per_domain: int = 3_000_000
    tokenizer_chars_per_domain: int = 1_000_000
    bf16_autocast: bool = True  # ~1.5x faster on CPUs with bf16 units; weights stay float32
    seed: int = 0

    @classmethod
    def default(cls) -> ZooSpec:
        """The full zoo: 3 families x (base + 3 fine-tunes), one interpolation series."""
        return cls(
            families=(
                FamilySpec("gpt2", "gpt2", 2048, 128, n_layer=2, d_model=128, n_head=4),
                FamilySpec("llama", "llama", 3072, 192, n_layer=3, d_model=192, n_head=4),
                FamilySpec("neox", "gpt_neox", 4096, 256, n_layer=3, d_model=192, n_head=4),
            ),
            interpolation=InterpolationSpec(family="llama", steps=120, lr=1e-3),
            leak=LeakSpec(family="llama", n_texts=600, steps=250, lr=1e-3),
        )

    @classmethod
    def compact(cls) -> ZooSpec:
        """The full zoo's shape at a fraction of its training (the demo's and the tests' zoo).

        The same members as `default` (three architectures and tokenizers, base + three
        fine-tunes each, a four-point interpolation series, the planted leaked model), so
        every assertion about the map (neighbours, the series, leakage, lineage) is made on
        the same structure; smaller models and fewer steps (104 s of training on two quiet
        cores against 450 s). Cached like any zoo, by its hash.

        The families differ in shape (NeoX one wide layer, Llama and GPT-2 two narrow ones)
        as real families do, so that on 300 texts the nearest model of another family lies
        beyond the measured fine-tune band (README, "Lineage"); the bases train at a higher lr
        and the planted leak longer, so that the paper's rule still catches it.
        """
        return dataclasses.replace(
            cls.default(),
            families=(
                FamilySpec("gpt2", "gpt2", 1024, 128, n_layer=2, d_model=64, n_head=2),
                FamilySpec("llama", "llama", 1536, 192, n_layer=2, d_model=64, n_head=2),
                FamilySpec("neox", "gpt_neox", 2048, 256, n_layer=1, d_model=128, n_head=4),
            ),
            interpolation=InterpolationSpec(family="llama", steps=80, lr=1e-3),
            leak=LeakSpec(family="llama", n_texts=600, steps=300, lr=2e-3),
            base_steps=500,
            base_lr=3e-3,
            max_chars_per_domain=1_000_000,
            tokenizer_chars_per_domain=300_000,
        )

    @classmethod
    def small(cls) -> ZooSpec:
        """A seconds-long zoo for unit tests: two tiny families, one fine-tune each, a series.

        Two families so the tests see both tokenizer conventions (Llama prepends BOS,
        GPT-2 does not).
        """
        return cls(
            families=(
                FamilySpec("gpt2", "gpt2", 384, 64, n_layer=1, d_model=32, n_head=2, n_finetunes=1),
                FamilySpec(
                    "llama", "llama", 384, 48, n_layer=1, d_model=32, n_head=2, n_finetunes=1
                ),
            ),
            interpolation=InterpolationSpec(family="llama", steps=4, lr=1e-3, alphas=(0.5,)),
            base_steps=12,
            base_warmup=2,
            finetune_steps=3,
            batch_size=4,
            max_chars_per_domain=200_000,
            bf16_autocast=False,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZooSpec:
        interp, leak = d.get("interpolation"), d.get("leak")
        fields = {k: v for k, v in d.items() if k not in ("families", "interpolation", "leak")}
        for k, v in fields.items():
            if isinstance(v, list):
                fields[k] = tuple(v)
        return cls(
            families=tuple(FamilySpec(**f) for f in d["families"]),
            interpolation=(
                InterpolationSpec(**{**interp, "alphas": tuple(interp["alphas"])})
                if interp
                else None
            ),
            leak=LeakSpec(**leak) if leak else None,
            **fields,
        )

    def hash(self) -> str:
        blob = json.dumps({"format": FORMAT_VERSION, "spec": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ZooModel:
    """One registry entry. ``path`` is relative to the zoo's out_dir."""

    key: str
    path: str
    family: str
    architecture: str
    role: str  # "base" | "finetune" | "interpolation" | "leaked"
    domain: str | None
    alpha: float | None
    n_params: int
    context_length: int
    vocab_size: int
    # The base model its card declares (Hub `base_model:`): the family's base for every
    # derived model, None for a base. Registries written before this field get it on load.
    base_model: str | None = None

    def local_path(self, out_dir: Path | str) -> Path:
        return Path(out_dir) / self.path


# --------------------------------------------------------------------------------------------
# Text


@dataclass
class _Doc:
    domain: str
    text: str


def _as_doc(d: Any) -> _Doc:
    """Accept dicts or objects with ``domain`` and ``text`` (the corpus module's documents)."""
    if isinstance(d, Mapping):
        return _Doc(str(d["domain"]), str(d["text"]))
    return _Doc(str(d.domain), str(d.text))


def _by_domain(documents: Iterable[Any], max_chars: int) -> dict[str, list[str]]:
    """Group texts by domain (sorted, deterministic), keeping at most max_chars per domain."""
    out: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    for doc in map(_as_doc, documents):
        if not doc.text or used.get(doc.domain, 0) >= max_chars:
            continue
        out.setdefault(doc.domain, []).append(doc.text)
        used[doc.domain] = used.get(doc.domain, 0) + len(doc.text)
    return {k: out[k] for k in sorted(out)}


def _data_hash(texts: Mapping[str, list[str]]) -> str:
    h = hashlib.sha256()
    for domain, docs in texts.items():
        h.update(domain.encode() + b"\0")
        for t in docs:
            h.update(t.encode() + b"\0")
    return h.hexdigest()[:16]


def slug(name: str) -> str:
    """A key-safe form of a domain name: "devil's dictionary" -> "devils-dictionary"."""
    s = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("'", "")).strip("-")
    return s or "x"


def _choose_domains(texts: Mapping[str, list[str]], preferred: Sequence[str], n: int) -> list[str]:
    """Preferred domains that exist (matched by slug), then the largest others, n in all."""
    by_slug = {slug(d): d for d in texts}
    chosen = [by_slug[slug(p)] for p in preferred if slug(p) in by_slug]
    size = {d: sum(map(len, t)) for d, t in texts.items()}
    rest = sorted((d for d in texts if d not in chosen), key=lambda d: (-size[d], d))
    return (chosen + rest)[:n]


# --------------------------------------------------------------------------------------------
# Tokenizers


# Special tokens per convention, mimicking the real models' layouts.
_SPECIALS = {
    # GPT-2: one token for bos/eos/unk; a pad token added (real GPT-2 has none).
    "gpt2": {
        "tokens": ["<|endoftext|>", "<|pad|>"],
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<|endoftext|>",
        "pad": "<|pad|>",
    },
    # Llama: <unk>=0, <s>=1, </s>=2; BOS is prepended to every encoded text.
    "llama": {
        "tokens": ["<unk>", "<s>", "</s>", "<pad>"],
        "bos": "<s>",
        "eos": "</s>",
        "unk": "<unk>",
        "pad": "<pad>",
    },
    # Pythia (GPT-NeoX): <|endoftext|>=0 for bos/eos/unk, <|padding|>=1.
    "gpt_neox": {
        "tokens": ["<|endoftext|>", "<|padding|>"],
        "bos": "<|endoftext|>",
        "eos": "<|endoftext|>",
        "unk": "<|endoftext|>",
        "pad": "<|padding|>",
    },
}


def _capped(texts: Mapping[str, list[str]], max_chars: int) -> Iterable[str]:
    """The first texts of each domain, up to max_chars per domain."""
    for docs in texts.values():
        used = 0
        for t in docs:
            if used >= max_chars:
                break
            used += len(t)
            yield t


def train_tokenizer(
    texts: Mapping[str, list[str]], family: FamilySpec, tokenizer_chars: int = 1_000_000
):
    """Train a byte-level BPE on all training text and wrap it for transformers.

    A BPE of a few thousand merges needs far less text than the models: at most
    ``tokenizer_chars`` per domain are used (every domain equally, so no domain's style
    dominates the vocabulary). Returns a ``PreTrainedTokenizerFast`` whose
    ``backend_tokenizer`` is the raw ``tokenizers.Tokenizer``, used for fast batch encoding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = _SPECIALS[family.architecture]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=family.vocab_size,
        special_tokens=sp["tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_capped(texts, tokenizer_chars), trainer=trainer)
    if family.architecture == "llama":
        bos = sp["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    else:
        # Byte-level post-processing only fixes offsets; it adds no tokens (like GPT-2).
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=sp["bos"],
        eos_token=sp["eos"],
        unk_token=sp["unk"],
        pad_token=sp["pad"],
        model_max_length=family.context_length,
        clean_up_tokenization_spaces=False,
    )


def _token_streams(tokenizer, texts: Mapping[str, list[str]]) -> dict[str, torch.Tensor]:
    """One long token stream per domain: documents joined as in real pre-training.

    GPT-2/NeoX style: text <eos> text <eos> ...; Llama style: <s> text </s> <s> text </s> ...
    Training windows are cut from these streams at random offsets.
    """
    backend = tokenizer.backend_tokenizer
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    prepend_bos = tokenizer("a")["input_ids"][0] == bos
    streams = {}
    for domain, docs in texts.items():
        ids: list[int] = []
        for enc in backend.encode_batch(docs, add_special_tokens=False):
            if prepend_bos:
                ids.append(bos)
            ids.extend(enc.ids)
            ids.append(eos)
        streams[domain] = torch.tensor(ids, dtype=torch.long)
    return streams


# --------------------------------------------------------------------------------------------
# Models and training


def make_config(family: FamilySpec, tokenizer):
    """A transformers config for the family, with its tokenizer's special token ids."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    d, n = family.d_model, family.n_layer
    if family.architecture == "gpt2":
        # No dropout: a few hundred steps on plenty of text do not overfit.
        return GPT2Config(
            n_positions=family.context_length,
            n_embd=d,
            n_layer=n,
            n_head=family.n_head,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    if family.architecture == "llama":
        return LlamaConfig(
            hidden_size=d,
            intermediate_size=_round_up(8 * d // 3, 64),
            num_hidden_layers=n,
            num_attention_heads=family.n_head,
            num_key_value_heads=family.n_head,
            max_position_embeddings=family.context_length,
            tie_word_embeddings=False,
            **ids,
        )
    if family.architecture == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=d,
            intermediate_size=4 * d,
            num_hidden_layers=n,
            num_attention_heads=family.n_head,
            max_position_embeddings=family.context_length,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            **ids,
        )
    raise ValueError(f"unknown architecture {family.architecture!r}")


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _seed(*parts: Any) -> int:
    """A stable seed from names (Python's hash() is salted per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def _batches(
    streams: Mapping[str, torch.Tensor],
    domains: Sequence[str],
    batch_size: int,
    context: int,
    gen: torch.Generator,
):
    """Endless batches of random windows, each row from a uniformly drawn domain.

    Drawing the domain first balances domains whatever their sizes (a large code domain would
    otherwise drown a small dictionary).
    """
    while True:
        rows = []
        for d in torch.randint(len(domains), (batch_size,), generator=gen).tolist():
            s = streams[domains[d]]
            start = torch.randint(max(1, len(s) - context), (1,), generator=gen).item()
            w = s[start : start + context]
            if len(w) < context:  # a domain shorter than the context: pad by wrapping
                w = s.repeat(context // len(s) + 1)[:context]
            rows.append(w)
        yield torch.stack(rows)


def train(
    model,
    streams: Mapping[str, torch.Tensor],
    domains: Sequence[str],
    *,
    steps: int,
    lr: float,
    warmup: int,
    batch_size: int,
    context: int,
    weight_decay: float,
    seed: int,
    bf16: bool,
    name: str,
    log: Log,
    cosine: bool,
) -> float:
    """AdamW on random windows. Returns the mean loss of the last 10% of steps."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    model.train()
    batches = _batches(streams, domains, batch_size, context, gen)
    t0, tail = time.time(), []
    for step in range(steps):
        # Warm-up, then cosine decay to 10% (bases); constant lr for short fine-tunes.
        if step < warmup:
            cur = lr * (step + 1) / warmup
        elif cosine:
            frac = (step - warmup) / max(1, steps - warmup)
            cur = lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        else:
            cur = lr
        for g in opt.param_groups:
            g["lr"] = cur
        x = next(batches)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
        if step == 0 or (step + 1) % 100 == 0 or step + 1 == steps:
            log(f"  {name} step {step + 1}/{steps} loss {loss.item():.3f} {time.time() - t0:.1f}s")
    model.eval()
    return sum(tail) / len(tail)


def interpolate(
    base_state: Mapping[str, torch.Tensor], ft_state: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """theta(a) = (1 - a) theta_base + a theta_ft, tensor by tensor, in float32."""
    if base_state.keys() != ft_state.keys():
        raise ValueError("state dicts of different architectures")
    return {
        k: (1.0 - alpha) * base_state[k].float() + alpha * ft_state[k].float() for k in base_state
    }


def _n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights counted once


def save_model_atomic(model, tokenizer, final: Path) -> None:
    """Write the folder under a temporary name, then rename it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


# --------------------------------------------------------------------------------------------
# Building and the registry


def declared_base(family: str, role: str) -> str | None:
    """The base model a zoo model declares: its family's base, unless it is that base."""
    return None if role == "base" else f"{KEY_PREFIX}/{family}-base"


def _entry(
    key: str, family: FamilySpec, role: str, domain: str | None, alpha: float | None, model
) -> ZooModel:
    return ZooModel(
        key=key,
        path=key,
        family=family.name,
        architecture=family.architecture,
        role=role,
        domain=domain,
        alpha=alpha,
        n_params=_n_params(model),
        context_length=family.context_length,
        vocab_size=model.config.vocab_size,
        base_model=declared_base(family.name, role),
    )


def _build_family(
    out_dir: Path,
    fam: FamilySpec,
    spec: ZooSpec,
    texts: Mapping[str, list[str]],
    ft_domains: Sequence[str],
    leak_texts: Sequence[str],
    log: Log,
) -> list[ZooModel]:
    """Tokenizer, base, fine-tunes and (if this is its family) the interpolation series."""
    from transformers import AutoModelForCausalLM

    t0 = time.time()
    tokenizer = train_tokenizer(texts, fam, spec.tokenizer_chars_per_domain)
    streams = _token_streams(tokenizer, texts)
    n_tok = sum(len(s) for s in streams.values())
    log(
        f"{fam.name}: tokenizer of {len(tokenizer)} tokens, {n_tok:,} training tokens, "
        f"{time.time() - t0:.1f}s"
    )
    common = dict(
        batch_size=spec.batch_size,
        context=fam.context_length,
        weight_decay=spec.weight_decay,
        bf16=spec.bf16_autocast,
        log=log,
    )
    entries = []
    leak = spec.leak if spec.leak is not None and spec.leak.family == fam.name else None
    leak_stream = _token_streams(tokenizer, {LEAK_DOMAIN: list(leak_texts)}) if leak else {}

    key = f"{KEY_PREFIX}/{fam.name}-base"
    torch.manual_seed(_seed(spec.seed, key, "init"))
    base = AutoModelForCausalLM.from_config(make_config(fam, tokenizer))
    loss = train(
        base,
        streams,
        list(texts),
        steps=spec.base_steps,
        lr=spec.base_lr,
        warmup=spec.base_warmup,
        seed=_seed(spec.seed, key),
        name=key,
        cosine=True,
        **common,
    )
    save_model_atomic(base, tokenizer, out_dir / key)
    entries.append(_entry(key, fam, "base", None, None, base))
    log(f"{key}: {_n_params(base):,} params, final loss {loss:.3f}")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    def finetune(domain: str, key: str, steps: int, lr: float, role: str = "finetune"):
        # A fresh optimiser and a constant small lr: a brief nudge, as most Hub fine-tunes.
        model = AutoModelForCausalLM.from_config(base.config)
        model.load_state_dict(base_state)
        loss = train(
            model,
            {**streams, **leak_stream},
            [domain],
            steps=steps,
            lr=lr,
            warmup=0,
            seed=_seed(spec.seed, key),
            name=key,
            cosine=False,
            **common,
        )
        save_model_atomic(model, tokenizer, out_dir / key)
        entries.append(_entry(key, fam, role, domain, None, model))
        log(f"{key}: final loss {loss:.3f}")
        return model

    for domain in ft_domains[: fam.n_finetunes]:
        finetune(
            domain,
            f"{KEY_PREFIX}/{fam.name}-ft-{slug(domain)}",
            spec.finetune_steps,
            spec.finetune_lr,
        )

    ip = spec.interpolation
    if ip is not None and ip.family == fam.name:
        domain = ft_domains[0]
        strong = finetune(
            domain, f"{KEY_PREFIX}/{fam.name}-ft-{slug(domain)}-strong", ip.steps, ip.lr
        )
        ft_state = strong.state_dict()
        for a in ip.alphas:
            key = f"{KEY_PREFIX}/{fam.name}-interp-{a:g}"
            model = AutoModelForCausalLM.from_config(base.config)
            model.load_state_dict(interpolate(base_state, ft_state, a))
            save_model_atomic(model, tokenizer, out_dir / key)
            entries.append(_entry(key, fam, "interpolation", domain, a, model))
        log(f"{fam.name}: interpolation series at alphas {list(ip.alphas)}")
    if leak is not None:
        finetune(LEAK_DOMAIN, f"{KEY_PREFIX}/{fam.name}-leaked", leak.steps, leak.lr, "leaked")
        log(f"{fam.name}: leaked model trained on {len(leak_texts)} corpus texts")
    log(f"{fam.name}: family done in {time.time() - t0:.1f}s")
    return entries


def load_registry(out_dir: Path | str) -> list[ZooModel]:
    """The models listed in ``<out_dir>/zoo.json``."""
    data = json.loads((Path(out_dir) / REGISTRY_NAME).read_text())
    return [ZooModel(**m) for m in data["models"]]


def _cached(out_dir: Path, build_hash: str) -> list[ZooModel] | None:
    path = out_dir / REGISTRY_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        models = [ZooModel(**m) for m in data["models"]]
    except (ValueError, KeyError, TypeError):
        return None
    if data.get("build_hash") != build_hash:
        return None
    if not all((m.local_path(out_dir) / "config.json").exists() for m in models):
        return None
    if any("base_model" not in m for m in data["models"]):
        # A registry from before declared bases: add them (the models are unchanged).
        models = [
            dataclasses.replace(m, base_model=declared_base(m.family, m.role)) for m in models
        ]
        data["models"] = [dataclasses.asdict(m) for m in models]
        _write_registry(out_dir, data)
    return models


def _write_registry(out_dir: Path, registry: dict) -> None:
    tmp = out_dir / f".{REGISTRY_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(registry, indent=1) + "\n")
    os.replace(tmp, out_dir / REGISTRY_NAME)


def build_zoo(
    out_dir: Path | str,
    documents: Iterable[Any] | None = None,
    spec: ZooSpec | None = None,
    log: Log = print,
    force: bool = False,
    leak_texts: Sequence[str] | None = None,
    threads: int | None = None,
) -> list[ZooModel]:
    """Train and save the zoo under out_dir; return its registry entries.

    documents: (domain, text) documents to train on; by default the corpus' "train" split,
    which is held out from the scored texts. leak_texts: the corpus texts the planted leaked
    model is trained on (default: the first ``spec.leak.n_texts`` of the default embedded
    corpus). If ``zoo.json`` records the same spec and training text, the existing zoo is
    returned without training (unless ``force``). threads: torch threads while training
    (default: the process's torch setting, every core unless limited; one when other
    processes share the cores, as test workers do).
    One trainer per folder at a time (`<out_dir>.lock`): the demo and the tests share the
    compact zoo's folder, and a second caller waits, then loads what the first trained.
    """
    out_dir = Path(out_dir)
    spec = spec or ZooSpec.default()
    if documents is None:
        from modelmap.corpus.build import load_embedded_documents

        documents = load_embedded_documents("train")
    texts = _by_domain(documents, spec.max_chars_per_domain)
    if not texts:
        raise ValueError("no training documents")
    if spec.leak is None:
        leak_texts = []
    elif leak_texts is None:
        from modelmap.corpus.build import load_embedded

        leak_texts = [t.text for t in load_embedded(spec.leak.n_texts)]
    data_hash = _data_hash({**texts, LEAK_DOMAIN: list(leak_texts)})
    build_hash = hashlib.sha256(f"{spec.hash()}:{data_hash}".encode()).hexdigest()[:16]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out_dir}.lock"):
        if not force and (cached := _cached(out_dir, build_hash)) is not None:
            log(f"zoo: {len(cached)} models cached in {out_dir} (build {build_hash})")
            return cached
        return _train(out_dir, spec, texts, leak_texts, build_hash, log, threads)


def _train(
    out_dir: Path,
    spec: ZooSpec,
    texts: dict[str, list[str]],
    leak_texts: Sequence[str],
    build_hash: str,
    log: Log,
    threads: int | None,
) -> list[ZooModel]:
    """Train every family of `spec` into `out_dir` and write its registry (see `build_zoo`)."""
    from transformers.utils import logging as hf_logging

    previous, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads or previous)
    hf_logging.disable_progress_bar()  # our own log lines say what is happening
    t_start = time.time()
    ft_domains = _choose_domains(
        texts, spec.finetune_domains, max(f.n_finetunes for f in spec.families)
    )
    log(
        f"zoo: {len(spec.families)} families, training domains {list(texts)}, "
        f"fine-tune domains {ft_domains}, {torch.get_num_threads()} threads"
    )
    entries: list[ZooModel] = []
    try:
        for fam in spec.families:
            entries += _build_family(out_dir, fam, spec, texts, ft_domains, leak_texts, log)
    finally:
        torch.set_num_threads(previous)
        if bars:
            hf_logging.enable_progress_bar()

    seconds = time.time() - t_start
    registry = {
        "format": FORMAT_VERSION,
        "build_hash": build_hash,
        "spec_hash": spec.hash(),
        "spec": spec.to_dict(),
        "training_domains": list(texts),
        "build_seconds": round(seconds, 1),
        "models": [dataclasses.asdict(e) for e in entries],
    }
    _write_registry(out_dir, registry)
    log(f"zoo: {len(entries)} models in {seconds:.1f}s -> {out_dir / REGISTRY_NAME}")
    return entries


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the embedded model zoo.")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--small", action="store_true", help="the tiny test zoo")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    t0 = time.time()
    models = build_zoo(
        args.out,
        spec=ZooSpec.small() if args.small else ZooSpec.default(),
        log=lambda s: print(s, flush=True),
        force=args.force,
    )
    for m in models:
        print(
            f"{m.key:32s} {m.architecture:9s} {m.role:13s} {m.n_params:>10,d} "
            f"ctx {m.context_length}"
        )
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
