"""Text log-likelihoods of a causal LM: the expensive step, done in token-budget batches.

For text s with tokens y_1..y_n (tokenized with the tokenizer's default special tokens),
    loglik(s) = sum_{t=2..n} log p(y_t | y_<t)       in nats.
First-token rule (the paper's, one rule for every model): the first token is never scored;
a tokenizer that prepends BOS therefore scores every text token, one that does not leaves the
first text token out. A text of one token has log-likelihood 0.

Texts longer than the model's context are scored with sliding windows (`plan_windows`): each
token is scored exactly once, with at least `context - stride` tokens of left context.

The engine (`score_texts`):
- sorts all windows by length and packs them into batches of at most `token_budget` padded
  tokens, padding on the right (causal attention never lets a real token see a pad, so no
  attention mask is needed and the fast causal kernel runs);
- runs the model body once per batch, gathers only the hidden states of scored positions and
  applies the output layer in row chunks with a float32 log-sum-exp, so the full
  batch x length x vocabulary logits tensor is never built;
- keeps one host synchronisation per batch (the per-window sums come back together).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


class ScoringError(RuntimeError):
    """Scoring produced unusable numbers; the message names the model and the cause."""


@dataclass(frozen=True)
class Window:
    """One model input: tokens[start:end] of text `text_index`; targets from `first_target` on.

    Token j (first_target <= j < end) is predicted from tokens[start:j].
    """

    text_index: int
    start: int
    end: int
    first_target: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_windows(
    n_tokens: int, context: int, stride: int | None = None
) -> list[tuple[int, int, int]]:
    """Split a text of `n_tokens` tokens into (start, end, first_target) windows of <= `context`.

    The first window is tokens[0:context] and scores tokens 1..context-1; each next window moves
    its end by `stride` (default context // 2) and scores only the tokens it adds.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context - 1:
        raise ValueError(f"stride must be in [1, context-1] = [1, {context - 1}], got {stride}")
    if n_tokens < 2:
        return []
    end = min(n_tokens, context)
    windows = [(0, end, 1)]
    while end < n_tokens:
        new_end = min(n_tokens, end + stride)
        windows.append((new_end - context, new_end, end))
        end = new_end
    return windows


def context_of_token(j: int, n_tokens: int, context: int, stride: int | None = None) -> int:
    """Start of the left context with which token j is scored (for references and tests)."""
    for start, end, first in plan_windows(n_tokens, context, stride):
        if first <= j < end:
            return start
    raise ValueError(f"token {j} of {n_tokens} is not scored")


def make_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Group item indices into batches of at most `token_budget` padded tokens.

    Items are sorted by length, longest first (an out-of-memory shows on the first batch, not
    the last); a batch's cost is its size times its longest item. An item longer than the
    budget gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * longest > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class ScoreResult:
    loglik_nats: np.ndarray  # (n_texts,) float64: sum of scored token log-probs
    n_tokens: np.ndarray  # (n_texts,) int64: tokens of the text incl. special tokens
    n_scored: np.ndarray  # (n_texts,) int64: tokens whose log-prob is in loglik_nats
    input_tokens: int  # real (unpadded) tokens fed to the model, windows' overlap included
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.input_tokens / self.wall_s if self.wall_s > 0 else float("nan")


@dataclass
class Progress:
    windows_done: int
    windows_total: int
    tokens_done: int
    tokens_total: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float:
        rate = self.tokens_per_s
        return (self.tokens_total - self.tokens_done) / rate if rate > 0 else float("inf")

    def __str__(self) -> str:
        return (
            f"{self.windows_done}/{self.windows_total} windows, "
            f"{self.tokens_done}/{self.tokens_total} tokens, "
            f"{self.tokens_per_s:,.0f} tokens/s, ETA {format_eta(self.eta_s)}"
        )


def tokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text with the tokenizer's default special tokens (no truncation)."""
    return tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]


@dataclass(frozen=True)
class TokenizedTexts:
    """The token ids of n texts in one flat array: text i is `flat[offsets[i]:offsets[i+1]]`."""

    flat: np.ndarray  # (total,) int64
    offsets: np.ndarray  # (n + 1,) int64

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]]) -> TokenizedTexts:
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((tok for t in ids for tok in t), dtype=np.int64, count=int(offsets[-1]))
        return cls(flat, offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of everything that decides a fast tokenizer's output, or None if unknown.

    Two tokenizer objects with the same fingerprint tokenize every text alike (fine-tunes of
    one base usually share their tokenizer), so their tokenization is done once.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    digest.update(backend.to_str().encode())
    for name in ("add_bos_token", "add_eos_token", "bos_token_id", "eos_token_id"):
        digest.update(f"|{name}={getattr(tokenizer, name, None)!r}".encode())
    return digest.hexdigest()


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        raw = text.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


class TokenCache:
    """Tokenizations kept per (tokenizer, texts): scoring many models that share a tokenizer
    on one corpus tokenizes it once. Holds at most `max_entries` corpora (least recent goes)."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], TokenizedTexts] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, tokenizer, texts: Sequence[str]) -> TokenizedTexts:
        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint is None:  # a slow tokenizer: no safe identity, tokenize every time
            return TokenizedTexts.from_lists(tokenize(tokenizer, texts))
        key = (fingerprint, texts_fingerprint(texts))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                return self._entries[key]
        tokens = TokenizedTexts.from_lists(tokenize(tokenizer, texts))
        with self._lock:
            self.misses += 1
            self._entries[key] = tokens
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return tokens

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


TOKEN_CACHE = TokenCache()


class OutputHead:
    """The output layer of a causal LM applied to chosen hidden states, with its quirks."""

    def __init__(self, model: torch.nn.Module):
        self.body = model.base_model
        self.lm_head = model.get_output_embeddings()
        if self.body is model or self.lm_head is None:
            raise ScoringError(f"{type(model).__name__} exposes no separate body and output layer")
        config = model.config
        # Models whose logits are post-processed after the output layer (Gemma 2/3, Cohere,
        # Granite): the same transform is applied here, or scores would differ from forward().
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.scale = getattr(config, "logit_scale", None)
        self.divide = getattr(config, "logits_scaling", None)
        weight = getattr(self.lm_head, "weight", None)
        self.vocab_size = int(weight.shape[0]) if weight is not None else config.vocab_size

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, hidden) -> (rows, vocab) float32 logits."""
        logits = self.lm_head(hidden).float()
        if self.scale:
            logits = logits * self.scale
        if self.divide:
            logits = logits / self.divide
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


# On CPU the output layer runs on row chunks whose float32 logits stay in cache (~32 MB):
# measured on SmolLM2 (49,152 tokens), 128-row chunks cost 1.2x the bare matrix product
# against 2x for 4,096-row chunks. On a GPU the largest chunk allowed is fastest.
CPU_HEAD_CHUNK_ELEMENTS = 1 << 23


# Padded tokens per batch. On CPU small batches keep activations in cache: SmolLM2-135M in
# bf16 on two cores scored 980 tokens/s with 2,048-token batches against 580 with 16,384.
CPU_TOKEN_BUDGET = 2_048
GPU_TOKEN_BUDGET = 16_384


def default_token_budget(device: torch.device) -> int:
    return CPU_TOKEN_BUDGET if device.type == "cpu" else GPU_TOKEN_BUDGET


def head_chunk_rows(head: OutputHead, device: torch.device, chunk_rows: int) -> int:
    """Rows of hidden states per output-layer chunk: `chunk_rows`, less on CPU for a big vocab."""
    if device.type == "cpu":
        return max(16, min(chunk_rows, CPU_HEAD_CHUNK_ELEMENTS // max(1, head.vocab_size)))
    return chunk_rows


def target_logprobs(
    head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int
) -> torch.Tensor:
    """log p(target) for each row of `hidden` (rows, H), computed `chunk_rows` rows at a time.

    The float32 log-softmax is fused with the gather of the target (cross-entropy), so each
    chunk's logits are read once more after the output layer writes them.
    """
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.shape[0], chunk_rows):
        logits = head.logits(hidden[lo : lo + chunk_rows])
        out[lo : lo + chunk_rows] = -F.cross_entropy(
            logits, targets[lo : lo + chunk_rows], reduction="none"
        )
    return out


def score_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    context: int,
    stride: int | None = None,
    token_budget: int | None = None,
    head_chunk_tokens: int = 4_096,
    name: str = "model",
    progress: Callable[[Progress], None] | None = None,
    token_ids: list[list[int]] | None = None,
    token_cache: TokenCache | None = TOKEN_CACHE,
) -> ScoreResult:
    """Log-likelihood (nats) of each text under `model`, batched by token budget.

    `context` is the longest window fed to the model; `token_budget` caps the padded tokens of
    a batch (None: `default_token_budget(device)`); `token_ids` may pass a tokenization of
    `texts`; otherwise the texts are tokenized through `token_cache` (None: no cache), so
    models sharing a tokenizer tokenize a corpus once. Raises `ScoringError` if any
    log-likelihood is NaN or infinite.
    """
    device = next(model.parameters()).device
    head = OutputHead(model)
    token_budget = token_budget or default_token_budget(device)
    chunk_rows = head_chunk_rows(head, device, head_chunk_tokens)
    if token_ids is not None:
        tokens = TokenizedTexts.from_lists(token_ids)
    elif token_cache is not None:
        tokens = token_cache.get(tokenizer, texts)
    else:
        tokens = TokenizedTexts.from_lists(tokenize(tokenizer, texts))
    n_embeddings = model.get_input_embeddings().num_embeddings
    if tokens.flat.size and int(tokens.flat.max()) >= n_embeddings:
        raise ScoringError(
            f"model {name}: token id {int(tokens.flat.max())} from its tokenizer is outside its "
            f"{n_embeddings} embeddings (the tokenizer's vocabulary is larger than the model's)"
        )
    windows = plan_all_windows(tokens.lengths, context, stride)
    lengths = windows[:, 2] - windows[:, 1]
    batches = make_batches(lengths.tolist(), token_budget)
    tokens_total = int(lengths.sum())
    loglik = np.zeros(len(tokens), dtype=np.float64)
    t0 = time.perf_counter()
    tokens_done = windows_done = 0
    with torch.inference_mode():
        for batch in batches:
            members = windows[batch]
            sums = score_batch(head, tokens, members, device, chunk_rows)
            np.add.at(loglik, members[:, 0], sums)
            windows_done += len(members)
            tokens_done += int(lengths[batch].sum())
            if progress is not None:
                progress(
                    Progress(
                        windows_done,
                        len(windows),
                        tokens_done,
                        tokens_total,
                        time.perf_counter() - t0,
                    )
                )
    wall = time.perf_counter() - t0
    bad = np.flatnonzero(~np.isfinite(loglik))
    if bad.size:
        raise ScoringError(
            f"model {name}: {bad.size} of {len(tokens)} log-likelihoods are NaN or infinite "
            f"(first at text index {bad[0]})"
        )
    n_tokens = tokens.lengths.astype(np.int64)
    return ScoreResult(loglik, n_tokens, np.maximum(n_tokens - 1, 0), tokens_total, wall)


def plan_all_windows(lengths: np.ndarray, context: int, stride: int | None = None) -> np.ndarray:
    """Every window of every text as rows (text_index, start, end, first_target), int64."""
    rows = [
        (t, start, end, first)
        for t, n in enumerate(lengths.tolist())
        for start, end, first in plan_windows(n, context, stride)
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


def batch_arrays(
    tokens: TokenizedTexts, members: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The host-side inputs of one batch, built without a Python loop over windows.

    Returns (inputs (B, width) right-padded with 0, flat positions row * width + p whose
    output predicts a target, the target ids, the row owning each position).
    """
    text, start, end, first = members.T
    lengths = end - start
    n_rows, width = len(members), int(lengths.max())
    # Every real input token: its row, its column and where it sits in the flat token array.
    row = np.repeat(np.arange(n_rows), lengths)
    col = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    inputs = np.zeros((n_rows, width), dtype=np.int64)
    inputs[row, col] = tokens.flat[np.repeat(tokens.offsets[text] + start, lengths) + col]
    # Scored tokens: window position first - start .. length - 1, predicted one position back.
    n_scored = end - first
    owner = np.repeat(np.arange(n_rows), n_scored)
    k = np.arange(int(n_scored.sum())) - np.repeat(np.cumsum(n_scored) - n_scored, n_scored)
    target_col = (first - start)[owner] + k
    positions = owner * width + target_col - 1
    return inputs, positions, inputs[owner, target_col], owner


def score_batch(
    head: OutputHead,
    tokens: TokenizedTexts,
    members: np.ndarray,
    device: torch.device,
    chunk_rows: int,
) -> np.ndarray:
    """Sum of scored log-probs per window of one batch; the only host sync is the return."""
    inputs, positions, targets, owners = (
        torch.from_numpy(a).to(device, non_blocking=True) for a in batch_arrays(tokens, members)
    )
    hidden = head.body(input_ids=inputs, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    logprobs = target_logprobs(head, hidden, targets, chunk_rows)
    sums = torch.zeros(len(members), dtype=torch.float64, device=device)
    sums.index_add_(0, owners, logprobs.double())
    return sums.cpu().numpy()


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))
