"""The benchmark harness runs end to end on a toy shape: structure and correctness only, never timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the benchmark compares neox with transformers")
pytest.importorskip("safetensors")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "tiny.json"
    cmd = [sys.executable, str(BENCH), "--preset", "tiny", "--reps", "1", "--impls", "neox,transformers",
           "--phases", "decode-b1,decode-b2,prefill,train", "--group-phases", "all",
           "--new-tokens", "4", "--prompt-len", "5", "--prefill-len", "16", "--train-batch", "2",
           "--train-seq", "8", "--train-steps", "1", "--inner", "1", "--bw-mb", "8",
           "--ckpt-dir", str(tmp / "ckpt"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_worker_reports_and_nothing_failed(tiny_run: tuple[dict, str]) -> None:
    data, _ = tiny_run
    rep = data["presets"]["tiny"]
    assert rep["errors"] == []
    impls = {s["impl"] for s in rep["samples"]}
    assert impls == {"machine", "neox", "transformers"}
    for impl in ("neox", "transformers"):
        for key in ("decode-b1.tok_s", "decode-b2.tok_s", "prefill.tok_s", "train.tok_s", "load.seconds",
                    "load.peak_over_import_mb", "train.peak_over_import_mb"):
            cell = rep["medians"][key][impl]
            assert cell is not None and cell["n"] == 1 and cell["median"] > 0, (key, impl, cell)
    assert rep["medians"]["bw.mv"]["machine"]["median"] > 0
    assert rep["roofline"]["tok_s"] > 0
    for s in rep["samples"]:
        for out in s["phases"].values():
            assert out["cpu"]["other_cores"] is None or out["cpu"]["other_cores"] >= 0


def test_neox_matches_transformers_in_the_harness(tiny_run: tuple[dict, str]) -> None:
    """Greedy tokens (batch 1 and 2), prefill logits and the first training loss agree."""
    data, _ = tiny_run
    checks = data["presets"]["tiny"]["checks"]
    assert {(c["phase"], c["impl"]) for c in checks} == {
        ("decode-b1", "neox"), ("decode-b2", "neox"), ("prefill", "neox"), ("train", "neox")}
    assert all(c["ok"] for c in checks), [c["text"] for c in checks if not c["ok"]]
    samples = {s["impl"]: s for s in data["presets"]["tiny"]["samples"]}
    for impl in ("neox", "transformers"):
        toks = samples[impl]["phases"]["decode-b2"]["tokens"]
        assert len(toks) == 2 and all(len(row) == 4 for row in toks)
    assert len(samples["transformers"]["phases"]["decode-b1"]["margins"]) == 4


def test_table_printed_and_summarize_rerenders_it(tiny_run: tuple[dict, str], tmp_path: Path) -> None:
    data, stdout = tiny_run
    assert "decode b1 tok/s" in stdout and "neox/tf" in stdout
    f = tmp_path / "r.json"
    f.write_text(json.dumps(data))
    proc = subprocess.run([sys.executable, str(BENCH), "--summarize", str(f)], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == data["presets"]["tiny"]["table"].strip()


def test_random_checkpoint_shards_without_holding_the_model(tmp_path: Path) -> None:
    """The writer used for the 20B shape: sharded output with an index naming every tensor once."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _randckpt
    finally:
        sys.path.pop(0)
    info = _randckpt.write_random_checkpoint(tmp_path, "tiny", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    names = [n for n, _ in _randckpt.tensor_shapes(_randckpt.preset_config("tiny"))]
    assert sorted(index["weight_map"]) == sorted(names)
    assert len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == info["weight_bytes"]
    again = _randckpt.write_random_checkpoint(tmp_path, "tiny", max_shard_bytes=200_000)
    assert again["cached"] is True


def test_sharded_random_checkpoint_loads_in_both_libraries(tmp_path: Path) -> None:
    import torch
    import transformers

    import neox

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import _randckpt
    finally:
        sys.path.pop(0)
    _randckpt.write_random_checkpoint(tmp_path, "tiny", max_shard_bytes=200_000)
    ours, info = neox.GPTNeoXForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    theirs, tinfo = transformers.GPTNeoXForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    for i in (info, tinfo):
        assert not i["missing_keys"] and not i["unexpected_keys"], i
    ids = torch.tensor([[5, 17, 300, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=1e-5, atol=1e-5)


def test_quantised_modes_run_and_are_compared_for_information(tmp_path: Path) -> None:
    """neox-int8 / neox-int4 / neox-bf16 run in the harness; their tokens are reported, never a MISMATCH."""
    out = tmp_path / "q.json"
    cmd = [sys.executable, str(BENCH), "--preset", "tiny", "--reps", "1", "--impls",
           "neox-int8,neox-int4,neox-bf16,transformers", "--phases", "decode-b1,train", "--group-phases", "all",
           "--new-tokens", "3", "--prompt-len", "4", "--inner", "1", "--bw-mb", "8", "--no-margins",
           "--train-batch", "1", "--train-seq", "4", "--train-steps", "1",
           "--ckpt-dir", str(tmp_path / "ckpt"), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(out.read_text())["presets"]["tiny"]
    assert rep["errors"] == []
    ran = {(s["impl"], ph) for s in rep["samples"] for ph in s["phases"]}
    assert {("neox-int8", "decode-b1"), ("neox-int4", "decode-b1"), ("neox-bf16", "decode-b1")} <= ran
    assert not any(impl != "transformers" and ph == "train" for impl, ph in ran)  # inference-only modes
    lossy = [c for c in rep["checks"] if c.get("lossy")]
    assert {c["impl"] for c in lossy} == {"neox-int8", "neox-int4", "neox-bf16"} and all(c["ok"] for c in lossy)
    assert "n-int8/tf" in proc.stdout and "MISMATCH" not in proc.stdout
