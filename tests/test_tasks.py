"""Multiple-choice tasks: the file format, the embedded tasks and log-likelihood accuracy."""

import json

import numpy as np
import pytest
import torch

from modelmap.corpus.build import load_embedded_documents
from modelmap.reports.tasks import (
    Item,
    Task,
    TaskError,
    default_tasks,
    evaluate_task,
    read_task,
    read_tasks,
    write_task,
)
from modelmap.scoring.loading import load_causal_lm


def test_default_tasks_are_deterministic_and_held_out():
    a, b = default_tasks(), default_tasks()
    assert [t.name for t in a] == ["cloze_prose", "word_order", "spelling"]
    assert [t.hash() for t in a] == [t.hash() for t in b]
    corpus_text = "".join(d.text for d in load_embedded_documents("corpus"))
    train_text = "".join(d.text for d in load_embedded_documents("train"))
    for task in a:
        assert len(task.items) == 100
        for item in task.items[:20]:
            assert len(item.choices) == 4 and len(set(item.choices)) == 4
            assert item.context not in corpus_text and item.context not in train_text
    # The right answers are spread over the positions.
    answers = np.bincount([it.answer for t in a for it in t.items], minlength=4)
    assert answers.min() > 40


def test_round_trip_and_clear_errors(tmp_path):
    task = default_tasks(n_items=5)[1]
    path = write_task(task, tmp_path)
    assert read_task(path) == task
    assert read_tasks(tmp_path) == [task]
    bad = tmp_path / "bad" / "t.jsonl"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 2}) + "\n")
    with pytest.raises(TaskError, match=r"t.jsonl: line 1: 'answer' must be an index"):
        read_task(bad)
    bad.write_text('{"context": "a", "choices": ["b"], "answer": 0}\n')
    with pytest.raises(TaskError, match="at least 2"):
        read_task(bad)
    bad.write_text("not json\n")
    with pytest.raises(TaskError, match="line 1: not JSON"):
        read_task(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskError, match="no \\*.jsonl"):
        read_tasks(tmp_path / "empty")


@pytest.mark.parametrize("context_len", [512, 12])
def test_choice_logliks_match_a_plain_per_token_computation(tiny_model, context_len):
    """The batched engine's continuation log-likelihoods equal a one-sequence-at-a-time loop,
    also when sequences are cut on the left to fit a short context."""
    lm = load_causal_lm("tiny/gpt2", tiny_model, device="cpu", dtype="float32")
    items = (
        Item("a", "The quick brown fox", (" jumps over", " sat", " runs far away"), 0),
        Item("b", "", (" hello world", " goodbye"), 1),
    )
    result = evaluate_task(lm.model, lm.tokenizer, Task("t", items), context=context_len)
    tok = lm.tokenizer
    expected = []
    for it in items:
        ctx = tok(it.context)["input_ids"] or [tok.eos_token_id]
        for choice in it.choices:
            cont = tok(choice, add_special_tokens=False)["input_ids"]
            seq = (ctx + cont)[-context_len:]
            n_cont = min(len(cont), len(seq) - 1)
            with torch.no_grad():
                logits = lm.model(torch.tensor([seq])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            expected.append(
                sum(float(logp[p - 1, seq[p]]) for p in range(len(seq) - n_cont, len(seq)))
            )
    np.testing.assert_allclose(result.choice_logliks, expected, rtol=1e-5)


def test_a_model_that_knows_the_answers_scores_100(tiny_model):
    """Accuracy follows the log-likelihood: a task whose right answer is the model's own
    most likely choice is answered perfectly, the reverse task never."""
    lm = load_causal_lm("tiny/gpt2", tiny_model, device="cpu", dtype="float32")
    items = tuple(Item(str(i), f"line {i}:", (" the the the", " zq xv kj pw"), 0) for i in range(6))
    r = evaluate_task(lm.model, lm.tokenizer, Task("t", items), context=64)
    best = [int(np.argmax(r.choice_logliks[2 * i : 2 * i + 2])) for i in range(6)]
    right = tuple(Item(it.id, it.context, it.choices, b) for it, b in zip(items, best, strict=True))
    wrong = tuple(
        Item(it.id, it.context, it.choices, 1 - b) for it, b in zip(items, best, strict=True)
    )
    assert evaluate_task(lm.model, lm.tokenizer, Task("r", right), context=64).accuracy == 100.0
    assert evaluate_task(lm.model, lm.tokenizer, Task("w", wrong), context=64).accuracy == 0.0
