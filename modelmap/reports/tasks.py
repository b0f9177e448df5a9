"""Multiple-choice tasks scored by log-likelihood: the benchmarks the platform measures itself.

A task is a JSONL file, ``<task name>.jsonl``, one item per line::

    {"id": "q1", "context": "In the beginning", "choices": [" God", " a"], "answer": 0}

``context`` is the prompt (may be empty), ``choices`` two or more continuations, ``answer`` the
index of the right one. A model answers with the choice whose continuation has the highest
log-likelihood given the context, ``sum_t log p(c_t | context, c_<t)``; its score on the task
is its accuracy in percent (as lm-evaluation-harness's ``acc``). Choices are tokenized after
the context tokens (context with the tokenizer's default special tokens, so Llama-style models
get their BOS; an empty context is replaced by the BOS or EOS token so that the first
continuation token is scored too). Sequences longer than the model's context are cut on the
left, keeping the continuation.

The embedded default tasks (``default_tasks``) are built from the "heldout" documents of the
embedded corpus, which neither the scored corpus nor the zoo's training text contains:

- ``cloze_prose``: the first ~120 characters of a prose chunk, then its true next ~60 among
  3 continuations taken from other chunks of the same domain (HellaSwag-like; hard);
- ``word_order``: the true continuation among 3 copies with two adjacent words swapped
  (grammar and idiom, not topic);
- ``spelling``: the true continuation among 3 copies with two adjacent letters of one word
  swapped (vocabulary).
All draw from every domain but ``cloze_prose`` (prose domains only). 100 items each. Wrong
choices have about the right choice's length: the raw log-likelihood sum favours short
continuations, so a task whose choices differ in length measures length, not knowledge.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modelmap.corpus.chunking import Document, chunk_documents
from modelmap.scoring.engine import (
    OutputHead,
    TokenizedTexts,
    head_chunk_rows,
    make_batches,
    score_batch,
)
from modelmap.storage import utf8_lines, write_text

PROSE_DOMAINS = ("bible", "devil", "fortunes", "jargon", "wikipedia")


class TaskError(ValueError):
    """A bad task file or item; the message names the file (and line) and the reason."""


@dataclass(frozen=True)
class Item:
    id: str
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class Task:
    name: str
    items: tuple[Item, ...]

    def hash(self) -> str:
        h = hashlib.sha256(self.name.encode() + b"\0")
        for it in self.items:
            h.update(json.dumps([it.context, list(it.choices), it.answer]).encode() + b"\0")
        return h.hexdigest()[:16]


def tasks_hash(tasks: Sequence[Task]) -> str:
    return hashlib.sha256("".join(t.hash() for t in tasks).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Files


def parse_item(obj: object, where: str) -> Item:
    if not isinstance(obj, dict):
        raise TaskError(f"{where}: an item must be a JSON object")
    missing = [k for k in ("context", "choices", "answer") if k not in obj]
    if missing:
        raise TaskError(f"{where}: missing field(s) {missing}")
    choices = obj["choices"]
    if not isinstance(choices, list) or len(choices) < 2:
        raise TaskError(f"{where}: 'choices' must be a list of at least 2 strings")
    if not all(isinstance(c, str) and c for c in choices):
        raise TaskError(f"{where}: every choice must be a non-empty string")
    if not isinstance(obj["context"], str):
        raise TaskError(f"{where}: 'context' must be a string")
    if len(set(choices)) != len(choices):
        # Equal choices tie, and a tie goes to the first: a duplicate of the answer scores it.
        raise TaskError(f"{where}: two choices are the same text")
    answer = obj["answer"]
    if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
        raise TaskError(f"{where}: 'answer' must be an index into the {len(choices)} choices")
    return Item(str(obj.get("id", where)), obj["context"], tuple(choices), answer)


def read_task(path: str | Path) -> Task:
    """A task from ``<name>.jsonl``; raises ``TaskError`` naming the file and line."""
    path = Path(path)
    items = []
    for lineno, line in utf8_lines(path, TaskError):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise TaskError(f"{path}: line {lineno}: not JSON ({err})") from err
        item = parse_item(obj, f"{path}: line {lineno}")
        try:  # a lone surrogate ("\ud800") has no UTF-8 form: no tokenizer takes it
            json.dumps([item.context, *item.choices], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as err:
            raise TaskError(f"{path}: line {lineno}: a lone surrogate ({err.reason})") from err
        items.append(item)
    if not items:
        raise TaskError(f"{path}: no items")
    return Task(path.stem, tuple(items))


def read_tasks(folder: str | Path) -> list[Task]:
    """Every ``*.jsonl`` task in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskError(f"{folder}: task folder not found")
    tasks = [read_task(p) for p in sorted(folder.glob("*.jsonl"))]
    if not tasks:
        raise TaskError(f"{folder}: no *.jsonl task files")
    return tasks


def write_task(task: Task, folder: str | Path) -> Path:
    lines = [
        json.dumps(
            {"id": it.id, "context": it.context, "choices": list(it.choices), "answer": it.answer},
            ensure_ascii=False,
        )
        for it in task.items
    ]
    return write_text("\n".join(lines) + "\n", Path(folder) / f"{task.name}.jsonl")


# --------------------------------------------------------------------------------------------
# The embedded default tasks


def _cut(text: str, start: int, n: int) -> int:
    """An index near ``start + n`` that falls just before a space (a word boundary)."""
    end = text.find(" ", start + n)
    return end if end != -1 else -1


def _spans(text: str, ctx_chars: int, cont_chars: int) -> tuple[str, str] | None:
    """(context, continuation) cut at word boundaries; the continuation starts with a space."""
    text = re.sub(r"[ \t]+", " ", text)
    a = _cut(text, 0, ctx_chars)
    if a <= 0:
        return None
    b = _cut(text, a + 1, cont_chars)
    if b <= a + 1:
        return None
    return text[:a], text[a:b]


def _swap_adjacent(span: str, rng: random.Random) -> str | None:
    """The span with two adjacent, different words swapped (whitespace kept in place)."""
    parts = re.split(r"(\s+)", span)
    words = [i for i, p in enumerate(parts) if p and not p.isspace()]
    pairs = [(a, b) for a, b in zip(words, words[1:], strict=False) if parts[a] != parts[b]]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    parts[a], parts[b] = parts[b], parts[a]
    return "".join(parts)


def _chunks(documents: Sequence[Document], domains: Sequence[str]) -> dict[str, list[str]]:
    chunks = chunk_documents([d for d in documents if d.domain in domains])
    out: dict[str, list[str]] = {}
    for c in chunks:
        out.setdefault(c.domain, []).append(c.text)
    return out


def _domain_spans(
    documents: Sequence[Document], domains: Sequence[str], ctx_chars: int, cont_chars: int
) -> dict[str, list[tuple[str, str]]]:
    """(context, continuation) of every chunk of ``domains``, by domain (in document order)."""
    return {
        d: [s for t in texts if (s := _spans(t, ctx_chars, cont_chars))]
        for d, texts in _chunks(documents, domains).items()
    }


def _round_robin(lists: dict[str, list]) -> list:
    """One element of each list in turn, so that a large domain does not fill a task."""
    longest = max(map(len, lists.values()), default=0)
    return [lists[d][k] for k in range(longest) for d in lists if k < len(lists[d])]


def _options(right: str, wrong: list[str], rng: random.Random) -> tuple[tuple[str, ...], int]:
    answer = rng.randrange(len(wrong) + 1)
    return tuple(wrong[:answer] + [right] + wrong[answer:]), answer


def cloze_task(
    name: str,
    documents: Sequence[Document],
    domains: Sequence[str],
    n_items: int,
    seed: int,
    *,
    ctx_chars: int = 120,
    cont_chars: int = 60,
    n_choices: int = 4,
) -> Task:
    """True continuation among continuations of other chunks of the same domain."""
    rng = random.Random(seed)
    by_domain = _domain_spans(documents, domains, ctx_chars, cont_chars)
    by_domain = {d: v for d, v in sorted(by_domain.items()) if len(v) >= n_choices}
    order = {d: [(d, i) for i in rng.sample(range(len(v)), len(v))] for d, v in by_domain.items()}
    pool = _round_robin(order)
    items = []
    for d, i in pool[:n_items]:
        context, right = by_domain[d][i]
        rest = [j for j in range(len(by_domain[d])) if j != i]
        wrong = [by_domain[d][j][1] for j in rng.sample(rest, n_choices - 1)]
        choices, answer = _options(right, wrong, rng)
        items.append(Item(f"{name}-{len(items):04d}", context, choices, answer))
    return Task(name, tuple(items))


def _swap_letters(span: str, rng: random.Random) -> str | None:
    """The span with two adjacent, different letters inside one word swapped."""
    spots = [
        m.start() + k
        for m in re.finditer(r"[A-Za-z]{4,}", span)
        for k in range(1, len(m.group()) - 2)
        if span[m.start() + k] != span[m.start() + k + 1]
    ]
    if not spots:
        return None
    k = rng.choice(spots)
    return span[:k] + span[k + 1] + span[k] + span[k + 2 :]


def perturbation_task(
    name: str,
    documents: Sequence[Document],
    perturb: Callable[[str, random.Random], str | None],
    n_items: int,
    seed: int,
    *,
    ctx_chars: int = 120,
    cont_chars: int = 60,
    n_choices: int = 4,
) -> Task:
    """True continuation among ``n_choices - 1`` perturbed copies of it."""
    rng = random.Random(seed)
    spans = _domain_spans(documents, sorted({d.domain for d in documents}), ctx_chars, cont_chars)
    for v in spans.values():
        rng.shuffle(v)
    pool = _round_robin({d: spans[d] for d in sorted(spans)})
    items = []
    for context, right in pool:
        if len(items) == n_items:
            break
        wrong: list[str] = []
        for _ in range(20):
            w = perturb(right, rng)
            if w and w != right and w not in wrong:
                wrong.append(w)
            if len(wrong) == n_choices - 1:
                break
        if len(wrong) < n_choices - 1:
            continue
        choices, answer = _options(right, wrong, rng)
        items.append(Item(f"{name}-{len(items):04d}", context, choices, answer))
    return Task(name, tuple(items))


def default_tasks(documents: Sequence[Document] | None = None, n_items: int = 100) -> list[Task]:
    """The embedded tasks, built deterministically from the held-out documents."""
    if documents is None:
        from modelmap.corpus.build import load_embedded_documents

        documents = load_embedded_documents("heldout")
    return [
        cloze_task("cloze_prose", documents, PROSE_DOMAINS, n_items, seed=1),
        perturbation_task("word_order", documents, _swap_adjacent, n_items, seed=3),
        perturbation_task("spelling", documents, _swap_letters, n_items, seed=4),
    ]


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class TaskResult:
    task: str
    accuracy: float  # percent
    n_items: int
    n_tokens: int
    seconds: float
    choice_logliks: np.ndarray  # per choice, item-major (flat)


def _sequences(tokenizer, task: Task, context: int) -> tuple[list[list[int]], np.ndarray]:
    """Token ids of every (context + choice) and windows (index, start, end, first_target)."""
    contexts = tokenizer([it.context for it in task.items])["input_ids"]
    flat_choices = [c for it in task.items for c in it.choices]
    conts = tokenizer(flat_choices, add_special_tokens=False)["input_ids"]
    filler = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else None
    if filler is None:
        filler = tokenizer.eos_token_id
    seqs, windows, k = [], [], 0
    for it, ctx in zip(task.items, contexts, strict=True):
        ctx = list(ctx) or ([filler] if filler is not None else [])
        for _ in it.choices:
            cont = conts[k]
            if not cont:
                raise TaskError(f"task {task.name}: item {it.id}: a choice has no tokens")
            seq = ctx + list(cont)
            start = max(0, len(seq) - context)
            first = max(len(ctx), start + 1)
            windows.append((k, start, len(seq), first))
            seqs.append(seq)
            k += 1
    return seqs, np.array(windows, dtype=np.int64).reshape(-1, 4)


def evaluate_task(
    model: torch.nn.Module,
    tokenizer,
    task: Task,
    *,
    context: int,
    token_budget: int = 2_048,
    head_chunk_tokens: int = 4_096,
) -> TaskResult:
    """Accuracy (%) of ``model`` on ``task``: batched by token budget, one host sync a batch."""
    device = next(model.parameters()).device
    head = OutputHead(model)
    chunk_rows = head_chunk_rows(head, device, head_chunk_tokens)
    seqs, windows = _sequences(tokenizer, task, context)
    tokens = TokenizedTexts.from_lists(seqs)
    lengths = windows[:, 2] - windows[:, 1]
    loglik = np.zeros(len(seqs), dtype=np.float64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in make_batches(lengths.tolist(), token_budget):
            members = windows[batch]
            loglik[members[:, 0]] = score_batch(head, tokens, members, device, chunk_rows)
    seconds = time.perf_counter() - t0
    if not np.isfinite(loglik).all():
        raise TaskError(f"task {task.name}: non-finite log-likelihoods")
    correct, k = 0, 0
    for it in task.items:
        scores = loglik[k : k + len(it.choices)]
        correct += int(np.argmax(scores) == it.answer)
        k += len(it.choices)
    return TaskResult(
        task.name,
        100.0 * correct / len(task.items),
        len(task.items),
        int(lengths.sum()),
        seconds,
        loglik,
    )


def evaluate_tasks(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[Task],
    *,
    context: int,
    token_budget: int = 2_048,
    log: Callable[[str], None] | None = None,
) -> list[TaskResult]:
    results = []
    for task in tasks:
        r = evaluate_task(model, tokenizer, task, context=context, token_budget=token_budget)
        if log:
            log(
                f"{task.name}: accuracy {r.accuracy:.1f}% on {r.n_items} items, "
                f"{r.n_tokens / max(r.seconds, 1e-9):,.0f} tokens/s"
            )
        results.append(r)
    return results
