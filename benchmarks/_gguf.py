"""GGUF files of a benchmark checkpoint, for the llama.cpp peers (llama-cpp-python).

f32 comes from llama.cpp's own converter (convert_hf_to_gguf.py, from a llama.cpp source tree:
set LLAMACPP_SRC, e.g. the vendor/llama.cpp folder of the llama-cpp-python sdist); f16, q8_0 and
q4_0 are then made from it with llama.cpp's quantizer (``llama_model_quantize``, its defaults:
q4_0 keeps the output head in q6_K, as llama.cpp's users get it). Files are cached in
``<checkpoint>/gguf/``.

The converter needs a tokenizer beside the weights although the benchmark feeds token ids: the
GPT-NeoX-20B tokenizer of shared/data (the Pythia suite's) is copied in. transformers 5 writes
``rope_parameters`` instead of ``rotary_pct``; the benchmark's own config.json has both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENIZER = HERE.parents[1] / "shared" / "data" / "gpt-neox-20b" / "tokenizer.json"
KINDS = ("f32", "f16", "q8_0", "q4_0")


def _src() -> Path:
    src = os.environ.get("LLAMACPP_SRC")
    if not src or not (Path(src) / "convert_hf_to_gguf.py").exists():
        raise RuntimeError("set LLAMACPP_SRC to a llama.cpp source tree holding convert_hf_to_gguf.py "
                           "(see benchmarks/README.md, 'llama.cpp peers')")
    return Path(src)


def _tokenizer() -> Path:
    for cand in (TOKENIZER, Path("/work/shared/data/gpt-neox-20b/tokenizer.json")):
        if cand.exists():
            return cand
    raise RuntimeError(f"the GGUF converter needs a tokenizer: {TOKENIZER} is missing")


#: Runs convert_hf_to_gguf.py with its config reader patched: it reads config.json through
#: transformers' AutoConfig, and transformers 5 drops ``rotary_pct`` / ``rotary_emb_base`` (folded into
#: ``rope_parameters``), which llama.cpp's GPT-NeoX converter still reads. The raw file's keys are put back.
_SHIM = """
import json, runpy, sys
from pathlib import Path
sys.argv = sys.argv[1:]
from conversion import base
_load = base.ModelBase.load_hparams
def load_hparams(dir_model, *args, **kwargs):
    hp = _load(dir_model, *args, **kwargs)
    raw = json.loads((Path(dir_model) / "config.json").read_text())
    for key in ("rotary_pct", "rotary_emb_base"):
        if key in raw:
            hp.setdefault(key, raw[key])
    return hp
base.ModelBase.load_hparams = staticmethod(load_hparams)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def gguf_for(ckpt: str | os.PathLike, kind: str) -> str:
    """The path of ``kind`` (f32, f16, q8_0, q4_0) GGUF of this checkpoint, made once."""
    if kind not in KINDS:
        raise ValueError(f"unknown GGUF kind {kind!r}; choose from {', '.join(KINDS)}")
    out_dir = Path(ckpt) / "gguf"
    out = out_dir / f"{kind}.gguf"
    if out.exists():
        return str(out)
    out_dir.mkdir(exist_ok=True)
    if kind == "f32":
        _convert(Path(ckpt), out)
    else:
        import llama_cpp

        src = gguf_for(ckpt, "f32")
        ftype = {"f16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
                 "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0}[kind]
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        params.nthread = int(os.environ.get("OMP_NUM_THREADS", "2"))
        tmp = out.with_suffix(".tmp")
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            raise RuntimeError(f"llama_model_quantize to {kind} failed (rc {rc})")
        os.replace(tmp, out)
    return str(out)


def _convert(ckpt: Path, out: Path) -> None:
    src = _src()
    stage = out.parent / "hf"
    stage.mkdir(exist_ok=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.setdefault("rotary_pct", (cfg.get("rope_parameters") or {}).get("partial_rotary_factor", 0.25))
    cfg.setdefault("rotary_emb_base", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000))
    (stage / "config.json").write_text(json.dumps(cfg, indent=1))
    shutil.copy(_tokenizer(), stage / "tokenizer.json")
    (stage / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPTNeoXTokenizer"}))
    for f in ckpt.iterdir():
        if f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json":
            link = stage / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src / "gguf-py"), str(src), env.get("PYTHONPATH", "")])
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run([sys.executable, "-c", _SHIM, str(src / "convert_hf_to_gguf.py"), str(stage), "--outtype",
                           "f32", "--outfile", str(tmp)], capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not tmp.exists():
        raise RuntimeError("convert_hf_to_gguf.py failed:\n" + proc.stderr[-3000:])
    os.replace(tmp, out)
