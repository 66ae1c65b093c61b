#!/usr/bin/env bash
# The GPU check, start to finish in a few minutes on one H200 (or any one large CUDA GPU):
#   1. the CUDA tests (tests/test_cuda.py, the quantised path included);
#   2. the benchmark at the pythia-410m shape (fp16: decode batch 1 and 8, prefill, training);
#   3. the benchmark at the gpt-neox-20b shape (fp16, random weights written on the GPU tensor by
#      tensor: decode batch 1 and 8, prefill; no training, its AdamW state would not fit);
#   4. one summary table of both, with the HBM roofline;
#   5. with 2+ GPUs: tensor parallelism over 2 of them (memory per rank, logits vs one GPU, generate).
#
#   bash benchmarks/gpu.sh                      # from anywhere; results in benchmarks/results/gpu/
#
# Environment knobs (all optional):
#   BENCH_OUT=dir          where the JSON files go (default: $OUT when set, else benchmarks/results/gpu)
#   BENCH_CKPT_DIR=dir     where the random checkpoints are written (the 20B one takes ~41 GB of disk)
#   BENCH_SKIP_TESTS=1     skip step 1;   BENCH_SKIP_20B=1   skip step 3
#   BENCH_IMPLS_SMALL / BENCH_IMPLS_BIG   implementations per shape (defaults below)
#   BENCH_NEW_TOKENS=128   tokens per decode run
#   BENCH_QUANT=0          leave out the int8 / int4 modes (on by default: fp16, int8, int4 side by side)
#   Dry run without a GPU (what CI on a CPU box can check):
#   BENCH_DEVICE=cpu BENCH_PRESET_SMALL=tiny BENCH_PRESET_BIG=tiny BENCH_SKIP_TESTS=1 bash benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=${BENCH_DEVICE:-cuda}
DTYPE=${BENCH_DTYPE:-float16}
SMALL=${BENCH_PRESET_SMALL:-pythia-410m}
BIG=${BENCH_PRESET_BIG:-gpt-neox-20b}
RESULTS=${BENCH_OUT:-${OUT:-benchmarks/results/gpu}}
CKPT_DIR=${BENCH_CKPT_DIR:-benchmarks/results/checkpoints}
NEW_TOKENS=${BENCH_NEW_TOKENS:-128}
mkdir -p "$RESULTS"
t0=$(date +%s)
status=0

echo "== environment"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'EOF' || exit 2
import torch
cuda = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name() if cuda else 'none'}")
try:
    import transformers
    print(f"transformers {transformers.__version__}")
except ImportError:
    print("transformers is not installed: only neox can be measured")
EOF
if [ "$DEVICE" = cuda ] && ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "CUDA is not available; for a dry run on CPU set BENCH_DEVICE=cpu (see the header of this script)" >&2
    exit 2
fi

echo
echo "== 1. CUDA tests"
if [ -n "${BENCH_SKIP_TESTS:-}" ]; then
    echo "skipped (BENCH_SKIP_TESTS)"
elif [ -f tests/test_cuda.py ]; then
    timeout 600 python3 -m pytest tests/test_cuda.py -q -rs || { echo "CUDA TESTS FAILED (rc $?)"; status=1; }
else
    echo "tests/test_cuda.py not found: skipped"
fi

# Which implementations exist here: transformers may be absent; neox's generate() may or may not
# take cache_implementation="static" (its CUDA-graph path). Probe both on a tiny model.
have_tf=$(python3 -c "import transformers" 2>/dev/null && echo 1 || echo 0)
neox_static=$(python3 - "$DEVICE" <<'EOF' 2>/dev/null || echo 0
import sys, torch
from neox import GPTNeoXConfig, GPTNeoXForCausalLM
cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
m = GPTNeoXForCausalLM(cfg).to(sys.argv[1]).eval()
ids = torch.ones(1, 3, dtype=torch.long, device=sys.argv[1])
out = m.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False, pad_token_id=0, cache_implementation="static")
print(1 if out.shape[1] == 5 else 0)
EOF
)
if [ "$have_tf" = 1 ]; then
    IMPLS_SMALL=${BENCH_IMPLS_SMALL:-neox,transformers,transformers-static}
    # transformers-static at 20B would spend minutes in torch.compile: off by default there.
    IMPLS_BIG=${BENCH_IMPLS_BIG:-neox,transformers}
else
    IMPLS_SMALL=${BENCH_IMPLS_SMALL:-neox}
    IMPLS_BIG=${BENCH_IMPLS_BIG:-neox}
fi
# Weight-only int8 / int4 (neox.quantization; tinygemm int4 and int8 weight-only matmuls), eager and
# with the static decode step compiled (CUDA graphs). BENCH_QUANT=0 leaves them out.
if [ "${BENCH_QUANT:-1}" = 1 ]; then
    IMPLS_SMALL="$IMPLS_SMALL,neox-int8,neox-int4,neox-int8-compiled,neox-int4-compiled"
    IMPLS_BIG="$IMPLS_BIG,neox-int8,neox-int4"
fi
if [ "$neox_static" = 1 ]; then
    case ",$IMPLS_SMALL," in *,neox-static,*) ;; *) IMPLS_SMALL="neox-static,$IMPLS_SMALL";; esac
    case ",$IMPLS_BIG," in *,neox-static,*) ;; *) IMPLS_BIG="neox-static,$IMPLS_BIG";; esac
else
    echo "neox generate(cache_implementation=\"static\") is not available: measuring neox's default generate only"
fi

COMMON=(--device "$DEVICE" --dtype "$DTYPE" --reps 1 --inner 3 --new-tokens "$NEW_TOKENS" --prompt-len 32
        --ckpt-dir "$CKPT_DIR" --group-phases all --worker-timeout 900)

echo
echo "== 2. benchmark: $SMALL ($IMPLS_SMALL)"
timeout 900 python3 benchmarks/bench.py --preset "$SMALL" --impls "$IMPLS_SMALL" \
    --phases decode-b1,decode-b8,prefill,train "${COMMON[@]}" --json "$RESULTS/small-$SMALL.json" \
    || { echo "BENCHMARK $SMALL FAILED (rc $?)"; status=1; }

if [ -z "${BENCH_SKIP_20B:-}" ]; then
    echo
    echo "== 3. benchmark: $BIG ($IMPLS_BIG)"
    timeout 1500 python3 benchmarks/bench.py --preset "$BIG" --impls "$IMPLS_BIG" \
        --phases decode-b1,decode-b8,prefill "${COMMON[@]}" --json "$RESULTS/big-$BIG.json" \
        || { echo "BENCHMARK $BIG FAILED (rc $?)"; status=1; }
fi

echo
echo "== 4. summary ($(( $(date +%s) - t0 )) s so far)"
files=()
for f in "$RESULTS/small-$SMALL.json" "$RESULTS/big-$BIG.json"; do [ -f "$f" ] && files+=("$f"); done
if [ ${#files[@]} -gt 0 ]; then
    python3 benchmarks/bench.py --summarize "${files[@]}" | tee "$RESULTS/summary.txt"
else
    echo "no results to summarise"; status=1
fi
echo
echo "== 5. tensor parallelism over 2 GPUs (NCCL): load memory per rank, logits vs one GPU, generate"
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "$DEVICE" = cuda ] && [ "$ngpu" -lt 2 ]; then
    echo "skipped: $ngpu GPU(s) here, tensor parallelism needs 2"
else
    # On CPU (BENCH_DEVICE=cpu) the same commands run 2 gloo processes.
    timeout 900 python3 benchmarks/tp_memory.py --dtype "$DTYPE" --dir "$CKPT_DIR" 2>&1 \
        | grep '^{' | tee "$RESULTS/tp-memory.jsonl" | grep -q . || { echo "TP MEMORY CHECK FAILED"; status=1; }
    timeout 300 python3 -m torch.distributed.run --nproc-per-node 2 examples/tp_generate.py --max-new-tokens 32 \
        || { echo "TP GENERATE FAILED (rc $?)"; status=1; }
fi
echo "total $(( $(date +%s) - t0 )) s; JSON and summary.txt in $RESULTS"
exit $status
