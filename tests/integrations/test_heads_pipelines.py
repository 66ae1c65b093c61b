"""transformers' pipelines given a neox head and a transformers tokenizer: the same results as with
transformers' head of the same weights. ("question-answering" is not tested: transformers 5.24 has
removed that pipeline task for every model.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import neox
from conftest import randomize_, tiny_kwargs

transformers = pytest.importorskip("transformers", reason="transformers (the pipelines and the oracle) is not installed")

TOKENIZER = Path(__file__).resolve().parents[2] / "neox" / "default_model"


@pytest.mark.parametrize("head, task, inputs", [
    ("GPTNeoXForSequenceClassification", "text-classification", ["def f(x): return x", "import os"]),
    ("GPTNeoXForTokenClassification", "token-classification", "def f(x): return x + 1"),
])
def test_pipeline_accepts_neox_heads(head, task, inputs):
    tokenizer = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    labels = {0: "bad", 1: "fine", 2: "good"}
    kwargs = tiny_kwargs(vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                         id2label=labels, label2id={v: k for k, v in labels.items()})
    hf_config = transformers.GPTNeoXConfig(**kwargs)
    hf_config._attn_implementation = "sdpa"
    theirs = randomize_(getattr(transformers, head)(hf_config)).eval()
    ours = getattr(neox, head)(neox.GPTNeoXConfig(**kwargs)).eval()
    ours.load_state_dict(theirs.state_dict())

    def run(model):
        pipe = transformers.pipeline(task, model=model, tokenizer=tokenizer, device="cpu")
        return pipe(inputs, top_k=None) if task == "text-classification" else pipe(inputs)  # top_k: every label

    want, got = run(theirs), run(ours)
    assert got and len(got) == len(want)
    flat = lambda rows: [r for row in rows for r in (row if isinstance(row, list) else [row])]  # noqa: E731
    for a, b in zip(flat(got), flat(want)):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert float(a["score"]) == pytest.approx(float(b["score"]), abs=1e-5)
    assert {r.get("label", r.get("entity")) for r in flat(got)} <= set(labels.values())
