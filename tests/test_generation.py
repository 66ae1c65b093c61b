"""generate(): token-for-token parity with transformers 5.24 (the oracle), and the properties that
must hold whatever the oracle does (cache == no cache, batch == rows alone, errors before work).

The models are tiny random GPT-NeoX checkpoints written by transformers and read by both libraries.
The output head is scaled up so logits are peaked: greedy/beam argmaxes are separated by far more
than the ~1e-7 float noise between the two implementations, so no choice can flip. Sampling tests
also check that the seed matters, so that they could fail.
"""

from __future__ import annotations

import copy
import io
import threading
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from neox import GPTNeoXForCausalLM  # noqa: E402
from neox.generation import (  # noqa: E402
    GenerateArgumentError,
    GenerationConfig,
    NonFiniteLogitsError,
    TextIteratorStreamer,
    TextStreamer,
)

VOCAB = 256
TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt-neox-20b" / "tokenizer.json"
if not TOKENIZER.exists():
    TOKENIZER = Path("/work/shared/data/gpt-neox-20b/tokenizer.json")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared machine the threads' waiting
    dominates (a 64-wide layer norm then takes milliseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _make_pair(tmp_path_factory, name: str, scale: float):
    torch.manual_seed(1234)
    config = transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, rotary_pct=0.25, bos_token_id=0, eos_token_id=2,
    )
    hf = transformers.GPTNeoXForCausalLM(config).eval()
    with torch.no_grad():
        hf.get_output_embeddings().weight.mul_(scale)
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path)
    return hf, GPTNeoXForCausalLM.from_pretrained(path), path


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """Sharp logits: for greedy and beam search."""
    return _make_pair(tmp_path_factory, "peaked", 8.0)[:2]


@pytest.fixture(scope="module")
def soft(tmp_path_factory):
    """Flatter logits, so that sampling has real choices to make."""
    return _make_pair(tmp_path_factory, "soft", 3.0)[:2]


@pytest.fixture(scope="module")
def tokenizer():
    if not TOKENIZER.exists():
        pytest.skip(f"the GPT-NeoX-20B tokenizer is not at {TOKENIZER}")
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))


def prompt(batch: int = 1, length: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def left_padded() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Three prompts of lengths 7, 4 and 1, left-padded with pad id 1."""
    rows = [prompt(1, n, seed=n)[0] for n in (7, 4, 1)]
    ids = torch.ones(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 7 - len(row):] = row
        mask[i, 7 - len(row):] = 1
    return ids, mask, rows


def run_both(pair, *args, seed: int = 0, **kwargs):
    hf, nx = pair
    torch.manual_seed(seed)
    expected = hf.generate(*args, **kwargs)
    torch.manual_seed(seed)
    got = nx.generate(*args, **kwargs)
    return expected, got


def assert_same(pair, *args, seed: int = 0, **kwargs) -> torch.Tensor:
    expected, got = run_both(pair, *args, seed=seed, **kwargs)
    assert got.dtype == torch.long
    assert torch.equal(got, expected), f"neox\n{got}\ntransformers\n{expected}"
    return got


# ------------------------------------------------------------------------------ greedy


def test_greedy_single_prompt(peaked):
    out = assert_same(peaked, prompt(), max_new_tokens=12, eos_token_id=None)
    assert out.shape == (1, 7 + 12)


def test_bare_call_gives_twenty_new_tokens(peaked):
    out = assert_same(peaked, prompt(), eos_token_id=None)
    assert out.shape == (1, 7 + 20)
    assert_same(peaked, prompt(length=5))  # with the checkpoint's eos (id 2)


def test_greedy_left_padded_batch(peaked):
    ids, mask, _ = left_padded()
    assert_same(peaked, ids, attention_mask=mask, max_new_tokens=10, pad_token_id=1)


def test_padding_inferred_from_pad_token(peaked):
    ids, _, _ = left_padded()
    assert_same(peaked, ids, max_new_tokens=6, pad_token_id=1)


def test_max_length(peaked):
    out = assert_same(peaked, prompt(), max_length=15, eos_token_id=None)
    assert out.shape == (1, 15)


def test_default_max_length_capped_by_max_position_embeddings(peaked):
    out = assert_same(peaked, prompt(length=120), eos_token_id=None)
    assert out.shape == (1, 128)


def test_eos_list_stops_and_pads(peaked):
    hf, nx = peaked
    ids, mask, _ = left_padded()
    free = nx.generate(ids, attention_mask=mask, max_new_tokens=12, pad_token_id=1, eos_token_id=None)
    # End-of-sequence ids that the rows actually produce, early and at different steps.
    eos = [int(free[0, 7 + 2]), int(free[1, 7 + 5])]
    out = assert_same(peaked, ids, attention_mask=mask, max_new_tokens=12, pad_token_id=1, eos_token_id=eos)
    new = out[:, 7:]
    first_stop = [next((i for i, t in enumerate(row.tolist()) if t in eos), None) for row in new]
    assert first_stop[0] is not None and first_stop[0] <= 2
    for row, stop in zip(new, first_stop):
        if stop is not None:
            assert (row[stop + 1:] == 1).all()  # finished rows are padded


def test_min_new_tokens_holds_back_eos(peaked):
    hf, nx = peaked
    ids = prompt()
    free = nx.generate(ids, max_new_tokens=10, eos_token_id=None)
    eos = int(free[0, 7 + 1])
    assert nx.generate(ids, max_new_tokens=10, eos_token_id=eos).shape[1] <= 7 + 2
    out = assert_same(peaked, ids, max_new_tokens=10, eos_token_id=eos, min_new_tokens=5)
    assert eos not in out[0, 7:12].tolist()
    assert_same(peaked, ids, max_new_tokens=10, eos_token_id=eos, min_length=12)


@pytest.mark.parametrize("settings", [
    dict(repetition_penalty=1.8),
    dict(repetition_penalty=0.7),
    dict(no_repeat_ngram_size=2),
    dict(repetition_penalty=1.3, no_repeat_ngram_size=3),
])
def test_penalties(peaked, settings):
    ids, mask, _ = left_padded()
    out = assert_same(peaked, ids, attention_mask=mask, max_new_tokens=25, pad_token_id=1, eos_token_id=None,
                      **settings)
    if settings.get("no_repeat_ngram_size") == 2:
        for row, m in zip(out, torch.cat([mask, torch.ones(3, 25, dtype=torch.long)], 1)):
            toks = row[m.bool()].tolist()
            pairs = list(zip(toks, toks[1:]))
            assert len(pairs) == len(set(pairs))


def test_bad_words_and_suppress_tokens(peaked):
    hf, nx = peaked
    ids = prompt()
    free = nx.generate(ids, max_new_tokens=10, eos_token_id=None)[0, 7:].tolist()
    bad = [[free[0]], [free[3], free[4]]]
    out = assert_same(peaked, ids, max_new_tokens=10, eos_token_id=None, bad_words_ids=bad)
    assert free[0] not in out[0, 7:].tolist()
    out = assert_same(peaked, ids, max_new_tokens=10, eos_token_id=None, suppress_tokens=[free[1], free[2]])
    assert not {free[1], free[2]} & set(out[0, 7:].tolist())


# ------------------------------------------------------------------------------ sampling


SAMPLING = [
    pytest.param(dict(), id="default-top-k-50"),
    pytest.param(dict(temperature=0.6, top_k=0), id="temperature"),
    pytest.param(dict(top_k=10), id="top-k"),
    pytest.param(dict(top_p=0.7, top_k=0), id="top-p"),
    pytest.param(dict(min_p=0.1, top_k=0), id="min-p"),
    pytest.param(dict(typical_p=0.6, top_k=0), id="typical-p"),
    pytest.param(dict(temperature=1.4, top_k=30, top_p=0.9, min_p=0.02), id="combined"),
    pytest.param(dict(epsilon_cutoff=0.003, eta_cutoff=0.002), id="epsilon-eta"),
]


@pytest.mark.parametrize("settings", SAMPLING)
def test_seeded_sampling(soft, settings):
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=15, pad_token_id=1, eos_token_id=None, do_sample=True, **settings)
    a = assert_same(soft, ids, seed=7, **kwargs)
    b = assert_same(soft, ids, seed=8, **kwargs)
    assert not torch.equal(a, b), "the seed made no difference: this test could not catch a wrong random stream"


def test_sampling_several_sequences_per_prompt(soft):
    ids, mask, _ = left_padded()
    out = assert_same(soft, ids, attention_mask=mask, max_new_tokens=8, pad_token_id=1, do_sample=True,
                      num_return_sequences=3, seed=3)
    assert out.shape[0] == 9


def test_sampling_with_eos_and_penalty(soft):
    hf, nx = soft
    ids = prompt(batch=2)
    free = nx.generate(ids, max_new_tokens=6, eos_token_id=None, do_sample=True)
    kwargs = dict(max_new_tokens=30, do_sample=True, repetition_penalty=1.2, pad_token_id=1,
                  eos_token_id=[int(free[0, -1]), 5])
    for seed in range(3):
        assert_same(soft, ids, seed=seed, **kwargs)


# ------------------------------------------------------------------------------ beam search


@pytest.mark.parametrize("settings", [
    dict(num_beams=3),
    dict(num_beams=4, num_return_sequences=3),
    dict(num_beams=3, length_penalty=0.5, early_stopping=True),
    dict(num_beams=3, num_return_sequences=2, early_stopping="never", length_penalty=1.5),
])
def test_beam_search(peaked, settings):
    hf, nx = peaked
    ids, mask, _ = left_padded()
    free = nx.generate(ids, attention_mask=mask, max_new_tokens=6, pad_token_id=1, eos_token_id=None)
    eos = [int(free[0, -3]), int(free[2, -2])]  # so that hypotheses finish at different lengths
    kwargs = dict(attention_mask=mask, max_new_tokens=12, pad_token_id=1, eos_token_id=eos,
                  return_dict_in_generate=True, output_scores=True, **settings)
    torch.manual_seed(0)
    expected = hf.generate(ids, **kwargs)
    got = nx.generate(ids, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores, rtol=1e-4, atol=1e-4)
    assert torch.equal(got.beam_indices, expected.beam_indices)
    assert len(got.scores) == len(expected.scores)
    plain = nx.generate(ids, **{k: v for k, v in kwargs.items() if k not in ("return_dict_in_generate", "output_scores")})
    assert torch.equal(plain, got.sequences)


def test_beam_sampling(soft):
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=10, pad_token_id=1, num_beams=3, do_sample=True,
                  num_return_sequences=2)
    a = assert_same(soft, ids, seed=11, **kwargs)
    b = assert_same(soft, ids, seed=12, **kwargs)
    assert not torch.equal(a, b)


def test_beam_search_without_eos(peaked):
    assert_same(peaked, prompt(batch=2), max_new_tokens=9, num_beams=2, eos_token_id=None)


# ------------------------------------------------------------------------------ inputs


def test_inputs_embeds(peaked):
    hf, nx = peaked
    ids, mask, _ = left_padded()
    embeds = nx.get_input_embeddings()(ids).detach()
    out = assert_same(peaked, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, pad_token_id=1,
                      eos_token_id=None)
    assert out.shape == (3, 8)  # only the new tokens, as transformers returns them
    with_ids = nx.generate(ids, attention_mask=mask, max_new_tokens=8, pad_token_id=1, eos_token_id=None)
    assert torch.equal(with_ids[:, 7:], out)
    assert_same(peaked, inputs_embeds=embeds[:1, 2:], max_length=12, eos_token_id=None)


def test_no_input_starts_from_bos(peaked):
    out = assert_same(peaked, max_new_tokens=6, eos_token_id=None)
    assert out.shape == (1, 7) and out[0, 0] == 0


def test_position_ids_follow_the_mask(peaked):
    """A left-padded row gives the tokens it gives alone, and as transformers gives them."""
    hf, nx = peaked
    ids, mask, rows = left_padded()
    batch = nx.generate(ids, attention_mask=mask, max_new_tokens=9, pad_token_id=1, eos_token_id=None)
    for i, row in enumerate(rows):
        alone = nx.generate(row[None], max_new_tokens=9, eos_token_id=None)
        assert torch.equal(batch[i, 7 - len(row):], alone[0])


@pytest.mark.parametrize("settings", [dict(), dict(num_beams=3), dict(do_sample=True, top_k=20)])
def test_cache_equals_no_cache(soft, peaked, settings):
    pair = soft if settings.get("do_sample") else peaked
    hf, nx = pair
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=10, pad_token_id=1, eos_token_id=None, **settings)
    torch.manual_seed(5)
    cached = nx.generate(ids, **kwargs)
    torch.manual_seed(5)
    uncached = nx.generate(ids, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    assert_same(pair, ids, seed=5, use_cache=False, **kwargs)


def test_continue_from_returned_cache(peaked):
    hf, nx = peaked
    ids = prompt()
    first = nx.generate(ids, max_new_tokens=5, eos_token_id=None, return_dict_in_generate=True)
    cache = first.past_key_values
    assert cache.length == first.sequences.shape[1] - 1
    longer = torch.cat([first.sequences, prompt(1, 3, seed=9)], dim=1)
    resumed = nx.generate(longer, past_key_values=cache, max_new_tokens=6, eos_token_id=None)
    fresh = nx.generate(longer, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(resumed, fresh)


# ------------------------------------------------------------------------------ configuration


def test_generation_config_json_both_ways(peaked, tmp_path):
    hf, nx = (copy.deepcopy(m) for m in peaked)  # the fixtures' own configs stay untouched
    ids = prompt()
    free = nx.generate(ids, max_new_tokens=8, eos_token_id=None)
    eos = int(free[0, 7 + 4])

    # Written by neox, read by transformers and by neox.
    nx.generation_config = GenerationConfig(max_new_tokens=6, eos_token_id=[eos, 3], pad_token_id=1,
                                            bos_token_id=0, repetition_penalty=1.3)
    nx.save_pretrained(tmp_path / "neox")
    hf2 = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "neox")
    nx2 = GPTNeoXForCausalLM.from_pretrained(tmp_path / "neox")
    assert nx2.generation_config.max_new_tokens == 6 and hf2.generation_config.max_new_tokens == 6
    out = assert_same((hf2, nx2), ids)
    assert out.shape[1] <= 7 + 6

    # Written by transformers, read by neox.
    hf.generation_config.max_new_tokens = 4
    hf.generation_config.no_repeat_ngram_size = 2
    hf.save_pretrained(tmp_path / "hf")
    nx3 = GPTNeoXForCausalLM.from_pretrained(tmp_path / "hf")
    hf3 = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path / "hf")
    assert_same((hf3, nx3), ids, eos_token_id=None)
    assert nx3.generate(ids, eos_token_id=None).shape == (1, 7 + 4)


def test_generation_config_object_and_overrides(peaked):
    hf, nx = peaked
    ids = prompt()
    hf_config = transformers.GenerationConfig(max_new_tokens=5, num_beams=2, eos_token_id=None)
    torch.manual_seed(0)
    expected = hf.generate(ids, generation_config=hf_config)
    assert torch.equal(nx.generate(ids, generation_config=hf_config), expected)  # transformers' object
    ours = GenerationConfig(max_new_tokens=5, num_beams=2)
    assert torch.equal(nx.generate(ids, generation_config=ours, eos_token_id=None), expected)
    # A keyword overrides the object; the object is not modified.
    assert nx.generate(ids, generation_config=ours, max_new_tokens=9, eos_token_id=None).shape == (1, 16)
    assert ours.max_new_tokens == 5
    assert_same(peaked, ids, generation_config=hf_config, max_new_tokens=9)


def test_explicit_none_switches_top_k_off(soft):
    ids = prompt()
    a = assert_same(soft, ids, seed=2, do_sample=True, top_k=None, max_new_tokens=12, eos_token_id=None)
    b = assert_same(soft, ids, seed=2, do_sample=True, max_new_tokens=12, eos_token_id=None)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("settings", [
    dict(forced_eos_token_id=9),
    dict(begin_suppress_tokens=[4, 5, 6]),
    dict(do_sample=True, renormalize_logits=True, top_k=40),
    dict(max_time=1e-9),
    dict(num_beams=2, forced_eos_token_id=[9, 10]),
])
def test_other_transformers_settings(soft, settings):
    ids, mask, _ = left_padded()
    assert_same(soft, ids, attention_mask=mask, max_new_tokens=8, pad_token_id=1, eos_token_id=None, seed=1,
                **settings)


def test_forced_bos_and_prefix_constraint(peaked):
    hf, nx = peaked
    assert_same(peaked, torch.tensor([[0]]), max_new_tokens=5, eos_token_id=None, forced_bos_token_id=17)

    def allowed(batch_id, sequence):
        return [10 + batch_id, 20 + int(sequence[-1]) % 7]

    for beams in (1, 3):
        out = assert_same(peaked, prompt(batch=2), max_new_tokens=6, eos_token_id=None, num_beams=beams,
                          prefix_allowed_tokens_fn=allowed)
        assert all(t in (10, 11) or 20 <= t < 27 for t in out[:, 7:].flatten().tolist())


# ------------------------------------------------------------------------------ outputs


def test_return_dict_scores_and_logits(soft):
    hf, nx = soft
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=1, do_sample=True, top_k=20, temperature=0.8,
                  return_dict_in_generate=True, output_scores=True, output_logits=True)
    torch.manual_seed(4)
    expected = hf.generate(ids, **kwargs)
    torch.manual_seed(4)
    got = nx.generate(ids, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    assert len(got.scores) == len(expected.scores) == len(got.logits) == 6
    for mine, theirs in zip(got.scores + got.logits, expected.scores + expected.logits):
        assert torch.equal(torch.isinf(mine), torch.isinf(theirs))
        finite = torch.isfinite(theirs)
        torch.testing.assert_close(mine[finite], theirs[finite], rtol=1e-4, atol=1e-4)
    assert got.past_key_values is got.cache and got.cache.length == got.sequences.shape[1] - 1
    assert got[0] is got.sequences  # ModelOutput indexing


def test_output_attentions_and_hidden_states(peaked):
    hf, nx = peaked
    ids = prompt()
    kwargs = dict(max_new_tokens=3, eos_token_id=None, return_dict_in_generate=True, output_attentions=True,
                  output_hidden_states=True)
    expected = hf.generate(ids, **kwargs)
    got = nx.generate(ids, **kwargs)
    assert len(got.attentions) == len(expected.attentions) == 3
    for step_mine, step_theirs in zip(got.hidden_states, expected.hidden_states):
        for mine, theirs in zip(step_mine, step_theirs):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    for step_mine, step_theirs in zip(got.attentions, expected.attentions):
        for mine, theirs in zip(step_mine, step_theirs):
            torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)


def test_output_is_an_ordinary_tensor(peaked):
    hf, nx = peaked
    out = nx.generate(prompt(), max_new_tokens=4, eos_token_id=None)
    assert out.is_contiguous() and not out.is_inference()
    out[out == 5] = -100  # in-place edits (e.g. building labels) must work outside inference mode


# ------------------------------------------------------------------------------ stopping and streaming


class Recorder:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def test_streamer_receives_prompt_tokens_end(peaked):
    hf, nx = peaked
    ids = prompt()
    streamer = Recorder()
    out = nx.generate(ids, max_new_tokens=5, eos_token_id=None, streamer=streamer)
    reference = Recorder()
    hf.generate(ids, max_new_tokens=5, eos_token_id=None, streamer=reference)
    kinds = [k for k, _ in streamer.calls]
    assert kinds == ["put"] * 6 + ["end"]
    assert torch.equal(streamer.calls[0][1], ids)
    assert torch.equal(torch.cat([v for _, v in streamer.calls[1:-1]]), out[0, 7:])
    assert len(reference.calls) == len(streamer.calls)
    for (k1, v1), (k2, v2) in zip(streamer.calls, reference.calls):
        assert k1 == k2 and (v1 is None or (torch.equal(v1, v2) and v1.shape == v2.shape))


def test_text_streamers(peaked, tokenizer):
    hf, nx = peaked
    ids = prompt()
    out = nx.generate(ids, max_new_tokens=12, eos_token_id=None)
    text = tokenizer.decode(out[0])

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        nx.generate(ids, max_new_tokens=12, eos_token_id=None, streamer=TextStreamer(tokenizer))
    assert buffer.getvalue() == text + "\n"

    theirs = io.StringIO()  # transformers' streamer works as is
    with redirect_stdout(theirs):
        nx.generate(ids, max_new_tokens=12, eos_token_id=None, streamer=transformers.TextStreamer(tokenizer))
    assert theirs.getvalue() == buffer.getvalue()

    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30)
    thread = threading.Thread(target=nx.generate, args=(ids,),
                              kwargs=dict(max_new_tokens=12, eos_token_id=None, streamer=streamer))
    thread.start()
    pieces = list(streamer)
    thread.join()
    assert "".join(pieces) == tokenizer.decode(out[0, 7:])


def test_stop_strings(peaked, tokenizer):
    hf, nx = peaked
    ids = prompt(batch=2)
    free = nx.generate(ids, max_new_tokens=15, eos_token_id=None)
    # Two consecutive new tokens of row 0 whose text is plain ASCII (byte tokens may be half a character).
    start = next(i for i in range(2, 13) if tokenizer.decode(free[0, 7 + i: 7 + i + 2]).isascii())
    stop = tokenizer.decode(free[0, 7 + start: 7 + start + 2])
    out = assert_same(peaked, ids[:1], max_new_tokens=15, eos_token_id=None, stop_strings=stop, tokenizer=tokenizer)
    assert out.shape[1] <= 7 + start + 2
    assert stop in tokenizer.decode(out[0, 7:])
    assert_same(peaked, ids, max_new_tokens=15, eos_token_id=None, pad_token_id=1, stop_strings=stop,
                tokenizer=tokenizer)
    # A stop string that ends inside a token still stops, as in transformers.
    partial = tokenizer.decode(free[1, 7 + 3: 7 + 5])[:-1] or stop
    assert_same(peaked, ids, max_new_tokens=15, eos_token_id=2, stop_strings=[partial, "zzzz"], tokenizer=tokenizer)


def test_user_processors_and_criteria(peaked):
    """Plain callables (input_ids, scores) -> ..., run where transformers runs them."""
    hf, nx = peaked
    ids = prompt(batch=2)

    def ban_odd(input_ids, scores):
        scores = scores.clone()
        scores[:, 1::2] = -float("inf")
        return scores

    def stop_after_three_new(input_ids, scores):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= 7 + 3, dtype=torch.bool)

    for beams in (1, 2):
        out = assert_same(peaked, ids, max_new_tokens=10, eos_token_id=None, num_beams=beams,
                          logits_processor=[ban_odd], stopping_criteria=[stop_after_three_new])
        assert out.shape == (2, 10) and (out[:, 7:] % 2 == 0).all()
    assert_same(peaked, ids, max_new_tokens=10, eos_token_id=None, do_sample=True, logits_processor=[ban_odd],
                stopping_criteria=transformers.StoppingCriteriaList([transformers.MaxLengthCriteria(12)]))


# ------------------------------------------------------------------------------ bad input


class ForwardCounter:
    def __init__(self, model):
        self.count = 0
        self.handle = model.embed_out.register_forward_hook(self)

    def __call__(self, *args):
        self.count += 1


@pytest.mark.parametrize("settings, match", [
    (dict(do_sample=True, top_p=0.0), "top_p"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(do_sample=True, top_p=-0.1), "top_p"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, temperature=-1.0), "temperature"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-3), "max_new_tokens"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(stop_strings="end"), "tokenizer"),
    (dict(max_length=5), "max_length"),
    (dict(do_sample=True, top_k=-1), "top_k"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(bad_words_ids=[[VOCAB + 3]]), "vocabulary"),
    (dict(guidance_scale=2.0), "guidance_scale"),
])
def test_bad_settings_raise_before_any_work(peaked, settings, match):
    hf, nx = peaked
    counter = ForwardCounter(nx)
    try:
        with pytest.raises(ValueError, match=match):
            nx.generate(prompt(), **settings)
    finally:
        counter.handle.remove()
    assert counter.count == 0


INF, NAN = float("inf"), float("nan")


# transformers 5.24 refuses these too (ValueError from its logits processors): parity.
REFUSED_BY_BOTH = [
    pytest.param(dict(do_sample=True, temperature=NAN), "temperature", id="temperature-nan"),
    pytest.param(dict(do_sample=True, top_k=INF), "top_k", id="top_k-inf"),
    pytest.param(dict(do_sample=True, top_k=2.5), "top_k", id="top_k-float"),
    pytest.param(dict(do_sample=True, min_p=NAN), "min_p", id="min_p-nan"),
    pytest.param(dict(do_sample=True, min_p=1.5), "min_p", id="min_p-above-1"),
    pytest.param(dict(repetition_penalty=NAN), "repetition_penalty", id="repetition_penalty-nan"),
    pytest.param(dict(repetition_penalty=-1.0), "repetition_penalty", id="repetition_penalty-negative"),
]

# transformers 5.24 accepts these and decodes garbage without a word (inf temperature: uniform over
# the top-k; NaN top_p/typical_p/eta: the filter silently off; inf repetition_penalty: every repeated
# token at 0 or -inf; NaN length_penalty: arbitrary beam order; NaN max_time: no limit), or hangs
# (max_new_tokens=inf): neox refuses each, naming the argument.
REFUSED_BY_NEOX = [
    pytest.param(dict(do_sample=True, temperature=INF), "temperature", id="temperature-inf"),
    pytest.param(dict(do_sample=True, top_p=NAN), "top_p", id="top_p-nan"),
    pytest.param(dict(do_sample=True, top_p=INF), "top_p", id="top_p-inf"),
    pytest.param(dict(do_sample=True, typical_p=NAN), "typical_p", id="typical_p-nan"),
    pytest.param(dict(do_sample=True, epsilon_cutoff=INF), "epsilon_cutoff", id="epsilon_cutoff-inf"),
    pytest.param(dict(do_sample=True, eta_cutoff=NAN), "eta_cutoff", id="eta_cutoff-nan"),
    pytest.param(dict(repetition_penalty=INF), "repetition_penalty", id="repetition_penalty-inf"),
    pytest.param(dict(num_beams=2, length_penalty=NAN), "length_penalty", id="length_penalty-nan"),
    pytest.param(dict(num_beams=2, length_penalty=INF), "length_penalty", id="length_penalty-inf"),
    pytest.param(dict(max_time=NAN), "max_time", id="max_time-nan"),
    pytest.param(dict(max_time=-1.0), "max_time", id="max_time-negative"),
    pytest.param(dict(max_new_tokens=INF), "max_new_tokens", id="max_new_tokens-inf"),
    pytest.param(dict(max_new_tokens=2.5), "max_new_tokens", id="max_new_tokens-float"),
    pytest.param(dict(max_length=INF), "max_length", id="max_length-inf"),
    pytest.param(dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size", id="no_repeat_ngram_size-negative"),
    pytest.param(dict(num_beams=0), "num_beams", id="num_beams-0"),
]


@pytest.mark.parametrize("settings, name", REFUSED_BY_BOTH + REFUSED_BY_NEOX)
def test_nonfinite_or_out_of_range_setting_is_refused_naming_it(peaked, settings, name):
    hf, nx = peaked
    counter = ForwardCounter(nx)
    try:
        with pytest.raises(ValueError, match=f"`{name}`"):
            nx.generate(prompt(), max_new_tokens=settings.pop("max_new_tokens", 3), **settings)
    finally:
        counter.handle.remove()
    assert counter.count == 0


@pytest.mark.parametrize("settings, name", REFUSED_BY_BOTH)
def test_transformers_refuses_the_same_settings(peaked, settings, name):
    hf, nx = peaked
    with pytest.raises(ValueError):
        hf.generate(prompt(), max_new_tokens=3, **settings)


def test_sampling_only_settings_stay_ignored_when_greedy(peaked):
    """As in transformers: a bad temperature/top_p does not matter (a warning) unless sampling."""
    assert_same(peaked, prompt(), max_new_tokens=4, temperature=INF, top_p=NAN)


@pytest.mark.parametrize("settings", [dict(max_new_tokens=10**12), dict(max_length=10**12),
                                      dict(max_new_tokens=10**6, do_sample=True, num_return_sequences=10**7)],
                         ids=["max_new_tokens", "max_length", "rows"])
def test_length_beyond_memory_is_refused_before_allocating(peaked, settings):
    """The preallocated cache for 10**12 positions (~1 PiB here) is refused up front, naming
    max_new_tokens; transformers' growing cache would run until memory or patience ends."""
    hf, nx = peaked
    counter = ForwardCounter(nx)
    try:
        with pytest.raises(ValueError, match=r"max_new_tokens=\d+ \(max_length \d+\) cannot fit.*At most max_new_tokens="):
            nx.generate(prompt(), **settings)
    finally:
        counter.handle.remove()
    assert counter.count == 0


def test_memory_limit_named_in_the_error_is_the_one_that_fits(peaked, monkeypatch):
    """With the memory made small, the limit the error names runs (and gives the same tokens as
    without the limit); one token more is refused."""
    import re

    import neox.generation.prepare as prepare

    hf, nx = peaked
    ids = prompt(batch=2)
    reference = nx.generate(ids, max_new_tokens=40, eos_token_id=None)
    monkeypatch.setattr(prepare, "_memory_available", lambda device: 64 * 1024)
    with pytest.raises(ValueError, match="max_new_tokens") as info:
        nx.generate(ids, max_new_tokens=40, eos_token_id=None)
    fits = int(re.search(r"At most max_new_tokens=(\d+)", str(info.value)).group(1))
    assert 0 < fits < 40
    assert torch.equal(nx.generate(ids, max_new_tokens=fits, eos_token_id=None), reference[:, : 7 + fits])
    with pytest.raises(ValueError, match=f"At most max_new_tokens={fits}"):
        nx.generate(ids, max_new_tokens=fits + 1, eos_token_id=None)


def test_lengths_beyond_max_position_embeddings_are_decoded_as_transformers_does(peaked, caplog):
    """Rotary models have no position limit: transformers only warns past max_position_embeddings
    (128 here), and so does neox, with the same tokens."""
    with caplog.at_level("WARNING", logger="neox.generation"):
        out = assert_same(peaked, prompt(length=100), max_new_tokens=40, eos_token_id=None)
    assert out.shape == (1, 140)
    assert "max_position_embeddings" in caplog.text


def test_unknown_keyword(peaked):
    hf, nx = peaked
    with pytest.raises(ValueError, match="max_new_token"):
        nx.generate(prompt(), max_new_token=5)
    with pytest.raises(TypeError, match="max_new_token"):
        nx.generate(prompt(), max_new_token=5)
    with pytest.raises(GenerateArgumentError):
        nx.generate(prompt(), assistant_model=nx)


@pytest.mark.parametrize("bad_inputs, match", [
    (dict(input_ids=torch.tensor([[3, VOCAB]])), "outside the vocabulary"),
    (dict(input_ids=torch.tensor([[3.0, 4.0]])), "integer"),
    (dict(input_ids=prompt(), attention_mask=torch.ones(1, 3, dtype=torch.long)), "attention_mask"),
    (dict(inputs_embeds=torch.zeros(1, 4, 5)), "inputs_embeds"),
])
def test_bad_inputs(peaked, bad_inputs, match):
    hf, nx = peaked
    with pytest.raises(ValueError, match=match):
        nx.generate(max_new_tokens=3, **bad_inputs)


def test_streamer_with_beams_is_refused(peaked):
    with pytest.raises(ValueError, match="beam"):
        peaked[1].generate(prompt(), num_beams=2, streamer=Recorder())


@pytest.mark.parametrize("settings", [dict(), dict(do_sample=True), dict(num_beams=2)])
def test_nonfinite_logits_name_the_step(peaked, settings):
    hf, nx = peaked
    calls = []

    def poison(module, args, output):
        calls.append(1)
        if len(calls) == 3:  # prefill is step 0: the third head call is step 2
            output = output.clone()
            output[..., 7] = float("nan")
            return output
        return output

    handle = nx.embed_out.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteLogitsError, match="step 2"):
            nx.generate(prompt(), max_new_tokens=6, eos_token_id=None, **settings)
        calls.clear()
        out = nx.generate(prompt(), max_new_tokens=6, eos_token_id=None, remove_invalid_values=True, **settings)
        assert out.shape[1] == 7 + 6  # opting in to remove_invalid_values cleans instead of raising
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ static cache


@pytest.mark.parametrize("settings", [
    dict(),
    dict(do_sample=True, top_k=20, top_p=0.9, repetition_penalty=1.3),
])
def test_static_cache_matches_transformers(soft, peaked, settings):
    """cache_implementation="static" (uncompiled on CPU, as in transformers): the same tokens as the
    oracle's static cache, on a left-padded batch whose rows stop at different times."""
    pair = soft if settings.get("do_sample") else peaked
    ids, mask, _ = left_padded()
    assert_same(pair, ids, attention_mask=mask, max_new_tokens=10, pad_token_id=1, seed=3,
                cache_implementation="static", **settings)


def test_static_cache_returned_and_continued(peaked):
    hf, nx = peaked
    ids = prompt()
    first = nx.generate(ids, max_new_tokens=5, eos_token_id=None, return_dict_in_generate=True,
                        cache_implementation="static")
    regular = nx.generate(ids, max_new_tokens=5, eos_token_id=None)
    assert torch.equal(first.sequences, regular)
    cache = first.past_key_values
    assert cache.length == first.sequences.shape[1] - 1
    assert cache.capacity == 256  # the static capacity (rounded up), not the regular cache's exact 11
    longer = torch.cat([first.sequences, prompt(1, 3, seed=9)], dim=1)
    resumed = nx.generate(longer, past_key_values=cache, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(resumed, nx.generate(longer, max_new_tokens=6, eos_token_id=None))


def test_static_cache_compiled_once_for_every_length(soft):
    """With a compile_config the static step is compiled (here by a counting backend that runs the
    captured graph as is): the same tokens as the regular path, and calls with other lengths (the
    capacity is rounded up) and other prompts reuse the one compiled graph."""
    hf, nx = soft
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    ids, mask, _ = left_padded()
    single = prompt()
    for new, seed in ((6, 1), (11, 2), (9, 3)):
        for inputs in (dict(inputs=ids, attention_mask=mask), dict(inputs=single)):
            kwargs = dict(inputs, max_new_tokens=new, pad_token_id=1, do_sample=True, top_k=30)
            torch.manual_seed(seed)
            regular = nx.generate(**kwargs)
            torch.manual_seed(seed)
            static = nx.generate(cache_implementation="static", compile_config={"backend": backend}, **kwargs)
            assert torch.equal(static, regular)
    # One graph per batch shape (3 rows, 1 row), whatever the lengths.
    assert len(graphs) == 2, f"the static decode step was compiled {len(graphs)} times for 2 batch shapes"


def test_static_cache_with_inductor(peaked):
    """The default backend end to end on CPU (needs a C++ compiler, as torch.compile does)."""
    import shutil

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on CPU; none is on PATH")
    hf, nx = peaked
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=8, pad_token_id=1)
    compiled = nx.generate(ids, cache_implementation="static", compile_config={}, **kwargs)
    assert torch.equal(compiled, nx.generate(ids, **kwargs))


def test_static_cache_max_autotune_frozen_weights(peaked, caplog):
    """compile_config mode="max-autotune" on CPU traces the step with frozen weights (inductor's C++
    GEMM templates pack them as constants): the same tokens and logits as eager decoding, and after
    the weights change in place the step is recompiled — a frozen graph would keep the old ones."""
    import copy
    import gc
    import shutil
    import weakref

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile's inductor backend needs a C++ compiler on CPU; none is on PATH")
    hf, nx = peaked
    model = copy.deepcopy(nx)  # its weights are changed below
    ids = prompt(2, 5, seed=4)
    kwargs = dict(max_new_tokens=6, eos_token_id=None, return_dict_in_generate=True, output_logits=True)
    compiled = dict(cache_implementation="static", compile_config={"mode": "max-autotune"})
    for round_ in range(2):
        eager = model.generate(ids, **kwargs)
        with caplog.at_level("WARNING", logger="neox.generation"):
            fast = model.generate(ids, **compiled, **kwargs)
        assert torch.equal(fast.sequences, eager.sequences), f"round {round_}"
        for a, b in zip(fast.logits, eager.logits):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert ("weights changed" in caplog.text) == (round_ == 1)
        with torch.no_grad():  # as load_state_dict or an optimiser step would: in place
            for layer in model.gpt_neox.layers:
                layer.mlp.dense_h_to_4h.weight.mul_(-1.5)
            model.embed_out.weight.copy_(model.embed_out.weight.roll(1, dims=0))
        assert not torch.equal(model.generate(ids, **kwargs).sequences, eager.sequences)  # the change matters
    # The compiled graphs (and their packed copy of the weights) go with the model.
    gone = weakref.ref(model)
    del model, fast, eager
    gc.collect()
    assert gone() is None, "the frozen decode step keeps the model alive"


def test_static_cache_falls_back_where_it_cannot_apply(peaked, caplog):
    hf, nx = peaked
    ids, mask, _ = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, pad_token_id=1, num_beams=3)
    with caplog.at_level("WARNING", logger="neox.generation"):
        out = nx.generate(ids, cache_implementation="static", **kwargs)
    assert "beam search" in caplog.text
    assert torch.equal(out, nx.generate(ids, **kwargs))
    with caplog.at_level("WARNING", logger="neox.generation"):
        nx.generate(ids, attention_mask=mask, max_new_tokens=2, pad_token_id=1, cache_implementation="offloaded")
    assert "offloaded" in caplog.text


def test_static_cache_bad_compile_config(peaked):
    hf, nx = peaked
    with pytest.raises(ValueError, match="compile_config: unknown keys"):
        nx.generate(prompt(), max_new_tokens=2, cache_implementation="static", compile_config={"fullgraf": True})
