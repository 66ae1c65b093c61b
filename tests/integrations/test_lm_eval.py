"""lm-eval (0.4.13) gives the same loglikelihoods, rolling loglikelihoods and generations with a
neox model and neox's tokenizer as with transformers' GPT-NeoX model and tokenizer (same weights,
same GPT-NeoX-20B tokenizer.json).

The oracle is lm-eval's own ``HFLM`` over the transformers model. lm-eval's tasks download their
datasets from the Hub, which this machine cannot reach, so the end-to-end check runs a small local
task (a JSON file through the ``json`` dataset builder) with ``--include_path``, through the
``python -m neox.integrations.lm_eval`` command line, against ``simple_evaluate`` on the oracle.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the oracle) is not installed")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from neox import GPTNeoXForCausalLM, GPTNeoXTokenizerFast  # noqa: E402
from neox.integrations.lm_eval import NeoXLM, main  # noqa: E402

TOKENIZER = Path(__file__).resolve().parents[3] / "shared" / "data" / "gpt-neox-20b" / "tokenizer.json"
if not TOKENIZER.exists():
    TOKENIZER = Path("/work/shared/data/gpt-neox-20b/tokenizer.json")
VOCAB = 50277  # the 20B tokenizer's size, so every generated id decodes
ATOL = 1e-5

CONTEXTS = ["The capital of France is", "Once upon a time,", "1 + 1 ="]
CONTINUATIONS = [" Paris", " there was a dragon", " 2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder holding weights + tokenizer, transformers model, transformers tokenizer)."""
    if not TOKENIZER.exists():
        pytest.skip(f"the GPT-NeoX-20B tokenizer is not at {TOKENIZER}")
    from conftest import randomize_, tiny_kwargs

    config = transformers.GPTNeoXConfig(**tiny_kwargs(vocab_size=VOCAB, max_position_embeddings=128))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    ref = randomize_(transformers.GPTNeoXForCausalLM(config)).eval()
    folder = tmp_path_factory.mktemp("lm_eval") / "model"
    ref.save_pretrained(folder)
    GPTNeoXTokenizerFast(tokenizer_file=str(TOKENIZER)).save_pretrained(folder)
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder)
    return folder, ref, ref_tok


def _requests(kind: str) -> list[Instance]:
    if kind == "loglikelihood":
        args = list(zip(CONTEXTS, CONTINUATIONS))
    elif kind == "loglikelihood_rolling":
        args = [(c + x,) for c, x in zip(CONTEXTS, CONTINUATIONS)]
    else:
        args = [(c, {"until": ["\n\n"], "max_gen_toks": 6, "do_sample": False}) for c in CONTEXTS]
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def _run(lm, kind: str) -> list:
    return getattr(lm, kind)(_requests(kind), disable_tqdm=True)


def _assert_same(got: list, want: list, kind: str) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if kind == "generate_until":
            assert g == w
        elif kind == "loglikelihood":
            assert math.isclose(g[0], w[0], abs_tol=ATOL) and g[1] == w[1]
        else:
            assert math.isclose(g, w, abs_tol=ATOL)


@pytest.fixture(scope="module")
def oracle(setup):
    folder, ref, ref_tok = setup
    lm = HFLM(pretrained=ref, tokenizer=ref_tok, device="cpu", batch_size=2)
    return {kind: _run(lm, kind) for kind in ("loglikelihood", "loglikelihood_rolling", "generate_until")}


@pytest.mark.parametrize("source", ["objects", "folder"])
def test_requests_match_transformers(setup, oracle, source):
    folder, _, _ = setup
    if source == "objects":  # an in-memory neox model with neox's tokenizer (HFLM itself asserts on it)
        model = GPTNeoXForCausalLM.from_pretrained(folder).eval()
        lm = NeoXLM(pretrained=model, tokenizer=GPTNeoXTokenizerFast.from_pretrained(folder), device="cpu",
                    batch_size=2)
    else:  # loaded by the adapter from the folder, as --model_args pretrained=<folder> does
        lm = NeoXLM(pretrained=str(folder), device="cpu", batch_size=2, dtype="float32")
        assert isinstance(lm.model, GPTNeoXForCausalLM) and isinstance(lm.tokenizer, GPTNeoXTokenizerFast)
    for kind, want in oracle.items():
        _assert_same(_run(lm, kind), want, kind)


def test_registered_name_and_unsupported_options(setup):
    from lm_eval.api.registry import get_model

    assert get_model("neox") is NeoXLM
    assert get_model("hf") is HFLM  # registering neox leaves lm-eval's own models in place
    folder, _, _ = setup
    with pytest.raises(ValueError, match="autogptq"):
        NeoXLM(pretrained=str(folder), device="cpu", autogptq=True)


TASK = """\
task: neox_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""

DOCS = [
    {"question": "The sky is", "choices": [" blue", " green", " loud"], "answer": 0},
    {"question": "Two plus two is", "choices": [" four", " five"], "answer": 0},
    {"question": "Water is", "choices": [" dry", " wet", " square"], "answer": 1},
]


def test_command_line_on_a_local_task(setup, tmp_path, monkeypatch):
    folder, ref, ref_tok = setup
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    data = tasks / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "neox_tiny_mc.yaml").write_text(TASK.format(data=data))

    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's ~15k built-in task files takes a minute on a busy machine; a local task
    # does not need them, and the command line has no flag to skip them.
    init = TaskManager.__init__
    monkeypatch.setattr(TaskManager, "__init__", lambda self, *a, **k: init(self, *a, **{**k, "include_defaults": False}))

    want = simple_evaluate(
        model=HFLM(pretrained=ref, tokenizer=ref_tok, device="cpu", batch_size=2), tasks=["neox_tiny_mc"],
        task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
    )
    out = tmp_path / "out"
    main(["--model", "neox", "--model_args", f"pretrained={folder},dtype=float32", "--tasks", "neox_tiny_mc",
          "--include_path", str(tasks), "--device", "cpu", "--batch_size", "2", "--log_samples",
          "--output_path", str(out)])
    (samples_file,) = out.rglob("samples_neox_tiny_mc_*.jsonl")
    got = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    expected = sorted(want["samples"]["neox_tiny_mc"], key=lambda s: s["doc_id"])
    assert len(got) == len(DOCS)
    for g, w, doc in zip(got, expected, DOCS):
        assert g["acc"] == w["acc"]
        assert len(g["resps"]) == len(w["resps"]) == len(doc["choices"])
        for (gl, gg), (wl, wg) in zip((r[0] for r in g["resps"]), (r[0] for r in w["resps"])):
            assert math.isclose(float(gl), float(wl), abs_tol=ATOL) and str(gg) == str(wg)
