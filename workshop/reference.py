"""A plain reference for text log-likelihoods: one window at a time, one token at a time.

This is the paper's algorithm written for clarity, not speed: a full forward pass per window,
a full-vocabulary float32 log-softmax, and a Python loop over tokens. The fast engine in
`modelmap.scoring.engine` must agree with it (tests hold them within 1e-5 relative in float32).
It uses the same first-token rule and the same sliding windows (`plan_windows`).
"""

from __future__ import annotations

import torch

from modelmap.scoring.engine import plan_windows, tokenize


def reference_loglik(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    *,
    context: int,
    stride: int | None = None,
) -> float:
    """Sum over scored tokens of log p(token | its window's left context), in nats."""
    device = next(model.parameters()).device
    tokens = tokenize(tokenizer, [text])[0]
    total = 0.0
    with torch.inference_mode():
        for start, end, first in plan_windows(len(tokens), context, stride):
            window = torch.tensor([tokens[start:end]], device=device)
            logits = model(input_ids=window, use_cache=False).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            for j in range(first, end):
                # The output at window position (j - start - 1) predicts token j.
                total += logprobs[j - start - 1, tokens[j]].item()
    return total
