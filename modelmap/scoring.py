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

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


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


def target_logprobs(
    head: OutputHead, hidden: torch.Tensor, targets: torch.Tensor, chunk_rows: int
) -> torch.Tensor:
    """log p(target) for each row of `hidden` (rows, H), computed `chunk_rows` rows at a time."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.shape[0], chunk_rows):
        logits = head.logits(hidden[lo : lo + chunk_rows])
        picked = logits.gather(1, targets[lo : lo + chunk_rows, None]).squeeze(1)
        out[lo : lo + chunk_rows] = picked - torch.logsumexp(logits, dim=1)
    return out


def score_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    context: int,
    stride: int | None = None,
    token_budget: int = 16_384,
    head_chunk_tokens: int = 4_096,
    name: str = "model",
    progress: Callable[[Progress], None] | None = None,
    token_ids: list[list[int]] | None = None,
) -> ScoreResult:
    """Log-likelihood (nats) of each text under `model`, batched by token budget.

    `context` is the longest window fed to the model; `token_ids` may pass a cached
    tokenization of `texts`. Raises `ScoringError` if any log-likelihood is NaN or infinite.
    """
    device = next(model.parameters()).device
    head = OutputHead(model)
    ids = token_ids if token_ids is not None else tokenize(tokenizer, texts)
    windows = [
        Window(t, start, end, first)
        for t, tokens in enumerate(ids)
        for start, end, first in plan_windows(len(tokens), context, stride)
    ]
    batches = make_batches([w.length for w in windows], token_budget)
    tokens_total = sum(w.length for w in windows)
    loglik = np.zeros(len(ids), dtype=np.float64)
    t0 = time.perf_counter()
    tokens_done = windows_done = 0
    with torch.inference_mode():
        for batch in batches:
            members = [windows[i] for i in batch]
            sums = _score_batch(model, head, ids, members, device, head_chunk_tokens)
            np.add.at(loglik, [w.text_index for w in members], sums)
            windows_done += len(members)
            tokens_done += sum(w.length for w in members)
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
            f"model {name}: {bad.size} of {len(ids)} log-likelihoods are NaN or infinite "
            f"(first at text index {bad[0]})"
        )
    n_tokens = np.array([len(t) for t in ids], dtype=np.int64)
    return ScoreResult(loglik, n_tokens, np.maximum(n_tokens - 1, 0), tokens_total, wall)


def _score_batch(
    model, head: OutputHead, ids: list[list[int]], members: list[Window], device, chunk_rows: int
) -> np.ndarray:
    """Sum of scored log-probs per window of one batch; the only host sync is the return."""
    width = max(w.length for w in members)
    inputs = torch.zeros((len(members), width), dtype=torch.long)
    flat_positions: list[int] = []  # row * width + position whose output predicts a target
    owner: list[int] = []  # which window each scored position belongs to
    targets: list[int] = []
    for row, w in enumerate(members):
        tokens = ids[w.text_index][w.start : w.end]
        inputs[row, : len(tokens)] = torch.tensor(tokens)
        # Output at position p predicts token p + 1 of the window.
        first = w.first_target - w.start
        flat_positions.extend(range(row * width + first - 1, row * width + w.length - 1))
        owner.extend([row] * (w.length - first))
        targets.extend(tokens[first:])
    inputs = inputs.to(device, non_blocking=True)
    positions = torch.tensor(flat_positions, device=device)
    target_ids = torch.tensor(targets, device=device)
    owners = torch.tensor(owner, device=device)

    hidden = head.body(input_ids=inputs, use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
    logprobs = target_logprobs(head, hidden, target_ids, chunk_rows)
    sums = torch.zeros(len(members), dtype=torch.float64, device=device)
    sums.index_add_(0, owners, logprobs.double())
    return sums.cpu().numpy()


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(seconds))
