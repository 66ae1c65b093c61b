#!/usr/bin/env python3
"""Train the small GPT-NeoX that ships in ``neox/default_model/``.

    python scripts/train_default_model.py                  # the shipped run (~20-40 min on 2 CPU cores)
    python scripts/train_default_model.py --steps 20 --out /tmp/smoke   # a one-minute smoke run

What it does, in order (every step seeded, every list sorted, so the same command on the same
Python, torch and thread count writes the same files):

1. Corpus: the ``.py`` files of the Python standard library found on this machine
   (``sysconfig.get_paths()["stdlib"]``), sorted by path, skipping test folders, ``site-packages``
   and ``encodings/`` (generated codec tables, not code a person wrote). The standard library is
   distributed under the Python Software Foundation License (PSF-2.0), a permissive license that
   allows this use; the shipped model card says so. Every 20th file (by sorted order) is held out:
   the held-out loss is measured on whole files the model and the tokenizer never saw.
2. Tokenizer: a byte-level BPE like GPT-NeoX's (NFC normaliser, ByteLevel pre-tokenizer without
   prefix space, ByteLevel decoder), trained with ``tokenizers`` on the training files only;
   ``<|endoftext|>`` is id 0 and ``<|padding|>`` id 1, as in EleutherAI's tokenizers. Runs of
   spaces are left to BPE, which learns newline+indent tokens (GPT-NeoX instead appends fixed
   whitespace tokens; on Python source the learned merges compress ~8% better).
3. Model: ``neox.GPTNeoXForCausalLM(config)`` (parallel residual, rotary on a quarter of each
   head, untied ``embed_out``) trained through its own forward with ``labels=``, ``torch.optim.AdamW``,
   linear warm-up then cosine decay, gradient clipping, optional gradient checkpointing.
   Batches are random windows of the training token stream (files joined by ``<|endoftext|>``),
   drawn from a seeded generator.
4. Evaluation: cross-entropy (nats/token) on every non-overlapping window of the held-out
   stream, measured on the weights as saved (fp16, reloaded as fp32), next to the unigram
   baseline: the training split's token frequencies (add-one smoothed) scored on the same
   held-out targets.
5. Output: a standard checkpoint folder -- config.json, model.safetensors (fp16),
   generation_config.json, tokenizer.json, tokenizer_config.json -- that neox and transformers
   both load, plus training_log.json (figures, including ``heldout_loss_bound`` that
   tests/test_default_model.py checks) and README.md (the model card).

The script never retrains in CI: tests use the committed folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "neox" / "default_model"

SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "encodings"})
HELDOUT_EVERY = 20  # file i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1
EOS, PAD = "<|endoftext|>", "<|padding|>"
# Windows of the held-out stream that tests/test_default_model.py re-scores (spread evenly).
TEST_SUBSET_WINDOWS = 24
# The bound the test checks: the loss measured here on that subset plus this margin, which
# leaves room for another Python version's standard library (different held-out files).
BOUND_MARGIN = 0.25


# ---------------------------------------------------------------------------------------- corpus


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files, sorted by relative path, test folders excluded."""
    root = stdlib_root() if root is None else root
    files = [
        p for p in root.rglob("*.py")
        if p.is_file() and not (set(p.relative_to(root).parts[:-1]) & SKIP_DIRS)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def split_files(files: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """(train, held-out): every HELDOUT_EVERY-th file by sorted order is held out."""
    train = [f for i, f in enumerate(files) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    heldout = [f for i, f in enumerate(files) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    return train, heldout


def read_text(path: Path) -> str:
    # A few stdlib files carry latin-1 bytes in comments; replacing them keeps the read total.
    return path.read_bytes().decode("utf-8", errors="replace")


def cap_files(files: Sequence[Path], max_bytes: int) -> list[Path]:
    """The longest prefix of ``files`` whose total size stays within ``max_bytes``."""
    out, total = [], 0
    for f in files:
        size = f.stat().st_size
        if total + size > max_bytes:
            break
        out.append(f)
        total += size
    return out


# ------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Any:
    """A GPT-NeoX-style byte-level BPE trained on ``texts`` (``tokenizers.Tokenizer``)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS, PAD],  # ids 0 and 1
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    if tok.token_to_id(EOS) != 0 or tok.token_to_id(PAD) != 1:
        raise RuntimeError("tokenizer training put the special tokens at unexpected ids")
    return tok


def tokenizer_config(max_length: int | None = None) -> dict[str, Any]:
    """tokenizer_config.json as transformers 5.24 writes it for GPTNeoXTokenizerFast."""
    return {
        "add_prefix_space": False,
        "backend": "tokenizers",
        "bos_token": EOS,
        "eos_token": EOS,
        "errors": "replace",
        # transformers' "no limit" value (int(1e30)); the context length is in config.json.
        "model_max_length": int(1e30) if max_length is None else max_length,
        "pad_token": PAD,
        "tokenizer_class": "GPTNeoXTokenizer",
        "trim_offsets": True,
        "unk_token": EOS,
    }


def encode_stream(tok: Any, texts: Sequence[str]) -> "torch.Tensor":
    """One 1-D token stream: <|endoftext|> file <|endoftext|> file ... (as GPT-NeoX packs documents)."""
    import torch

    ids: list[int] = []
    for enc in tok.encode_batch(list(texts), add_special_tokens=False):
        ids.append(0)
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


def windows(stream: "torch.Tensor", length: int) -> "torch.Tensor":
    """Non-overlapping windows (N, length) covering the stream (the ragged tail dropped)."""
    n = stream.numel() // length
    return stream[: n * length].view(n, length)


def subset(rows: "torch.Tensor", count: int) -> "torch.Tensor":
    """``count`` rows spread evenly over ``rows`` (all of them when there are fewer)."""
    if rows.shape[0] <= count:
        return rows
    step = rows.shape[0] / count
    return rows[[int(i * step) for i in range(count)]]


def unigram_cross_entropy(train_stream: "torch.Tensor", heldout_windows: "torch.Tensor", vocab_size: int) -> float:
    """Cross-entropy (nats/token) of the add-one smoothed train unigram on the held-out targets.

    The targets are the ones the model is scored on: positions 1..T-1 of every window.
    """
    import torch

    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0
    logp = counts.log() - counts.sum().log()
    targets = heldout_windows[:, 1:].reshape(-1)
    return float(-logp[targets].mean())


# ------------------------------------------------------------------------------------- training


def lr_at(step: int, total: int, peak: float, warmup: int, final_fraction: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``final_fraction * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def evaluate(model: Any, rows: "torch.Tensor", batch_size: int) -> float:
    """Mean next-token cross-entropy (nats/token) over windows ``rows`` (N, T)."""
    import torch

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, rows.shape[0], batch_size):
            batch = rows[i : i + batch_size]
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            n = batch.shape[0] * (batch.shape[1] - 1)  # every window has T-1 targets
            total += float(loss) * n
            count += n
    model.train(was_training)
    return total / count


def build_config(args: argparse.Namespace, vocab_size: int) -> Any:
    from neox import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.hidden_size,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000.0,
        max_position_embeddings=args.seq_len,
        initializer_range=0.02,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
        attention_bias=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint folder to write (default: %(default)s)")
    p.add_argument("--steps", type=int, default=1200, help="optimizer steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (results depend on it)")
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512, help="training window = the model's context")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--final-lr-fraction", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=250, help="steps between small held-out evaluations")
    p.add_argument("--max-corpus-mb", type=float, default=40.0, help="cap on the corpus size (MB of source)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (less memory, slower)")
    p.add_argument("--save-dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    args = p.parse_args(argv)
    for name in ("steps", "threads", "vocab_size", "hidden_size", "layers", "heads", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.eval_every < 1:
        p.error("--warmup must be >= 0 and --eval-every >= 1")
    if args.hidden_size % args.heads:
        p.error(f"--hidden-size {args.hidden_size} is not divisible by --heads {args.heads}")
    return args


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from neox import GPTNeoXForCausalLM

    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    # 1. corpus
    root = stdlib_root()
    files = cap_files(corpus_files(root), int(args.max_corpus_mb * 1e6))
    if len(files) < 2 * HELDOUT_EVERY:
        raise SystemExit(f"train_default_model: found only {len(files)} .py files under {root}")
    train_files, heldout_files = split_files(files)
    train_texts = [read_text(f) for f in train_files]
    heldout_texts = [read_text(f) for f in heldout_files]
    corpus_bytes = sum(len(t.encode("utf-8")) for t in train_texts + heldout_texts)
    corpus_hash = hashlib.sha256()
    for f, text in zip(train_files + heldout_files, train_texts + heldout_texts):
        corpus_hash.update(f.relative_to(root).as_posix().encode() + b"\0" + text.encode("utf-8") + b"\0")
    log(f"corpus: {len(files)} files ({corpus_bytes / 1e6:.1f} MB) under {root}; "
        f"{len(train_files)} train, {len(heldout_files)} held out")

    # 2. tokenizer
    tok = train_tokenizer(train_texts, args.vocab_size)
    vocab_size = tok.get_vocab_size()
    train_stream = encode_stream(tok, train_texts)
    heldout_stream = encode_stream(tok, heldout_texts)
    heldout_rows = windows(heldout_stream, args.seq_len)
    log(f"tokenizer: {vocab_size} tokens; train {train_stream.numel():,} tokens, held out {heldout_stream.numel():,} "
        f"({heldout_rows.shape[0]} windows of {args.seq_len}); "
        f"{sum(len(t.encode()) for t in train_texts) / train_stream.numel():.2f} bytes/token")
    unigram = unigram_cross_entropy(train_stream, heldout_rows, vocab_size)
    log(f"unigram baseline (held out): {unigram:.4f} nats/token")

    # 3. model and optimizer
    config = build_config(args, vocab_size)
    model = GPTNeoXForCausalLM(config)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8,
    )
    log(f"model: {n_params:,} parameters; {args.steps} steps x {args.batch_size} x {args.seq_len} tokens")

    gen = torch.Generator().manual_seed(args.seed)
    max_start = train_stream.numel() - args.seq_len
    eval_rows = subset(heldout_rows, 16)
    curve: list[dict[str, float]] = []
    recent: list[float] = []
    t_train = time.perf_counter()
    for step in range(args.steps):
        lr = lr_at(step, args.steps, args.lr, args.warmup, args.final_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, max_start + 1, (args.batch_size,), generator=gen)
        batch = torch.stack([train_stream[s : s + args.seq_len] for s in starts.tolist()])  # (B, T)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            held = evaluate(model, eval_rows, args.batch_size)
            elapsed = time.perf_counter() - t_train
            train_avg = sum(recent) / len(recent)
            curve.append({"step": step + 1, "train_loss": round(train_avg, 4), "heldout_loss_sample": round(held, 4),
                          "lr": lr, "grad_norm": round(float(grad_norm), 4), "elapsed_s": round(elapsed, 1)})
            tps = (step + 1) * args.batch_size * args.seq_len / elapsed
            log(f"step {step + 1:5d}/{args.steps}  train {train_avg:.4f}  held-out(sample) {held:.4f}  "
                f"lr {lr:.2e}  {tps:,.0f} tok/s  {elapsed / 60:.1f} min")
            recent = []
    train_seconds = time.perf_counter() - t_train

    # 4. save, reload what was written, and evaluate the shipped weights
    out: Path = args.out
    save_dtype = getattr(torch, args.save_dtype)
    model.eval()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_disable()
    tmp = Path(tempfile.mkdtemp(prefix=".default_model-", dir=out.parent if out.parent.exists() else None))
    try:
        model.to(save_dtype).save_pretrained(tmp)
        tok.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(), indent=2) + "\n", encoding="utf-8")
        shipped = GPTNeoXForCausalLM.from_pretrained(tmp, dtype=torch.float32)
        heldout_loss = evaluate(shipped, heldout_rows, args.batch_size)
        test_rows = subset(heldout_rows, TEST_SUBSET_WINDOWS)
        heldout_subset_loss = evaluate(shipped, test_rows, args.batch_size)
        train_sample = subset(windows(train_stream, args.seq_len), heldout_rows.shape[0])
        train_loss = evaluate(shipped, train_sample, args.batch_size)
        log(f"final (saved {args.save_dtype} weights): train {train_loss:.4f}  held out {heldout_loss:.4f}  "
            f"unigram {unigram:.4f} nats/token")

        record = {
            "command": " ".join(["python scripts/train_default_model.py", *_explicit_args(argv)]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"},
            "corpus": {
                "source": "Python standard library .py files (PSF-2.0 license)",
                "python": platform.python_version(),
                "files": len(files), "train_files": len(train_files), "heldout_files": len(heldout_files),
                "heldout_rule": f"file i (sorted by path) is held out when i % {HELDOUT_EVERY} == {HELDOUT_EVERY - 1}",
                "skipped_dirs": sorted(SKIP_DIRS),
                "bytes": corpus_bytes,
                "sha256": corpus_hash.hexdigest(),
                "train_tokens": train_stream.numel(), "heldout_tokens": heldout_stream.numel(),
            },
            "model": {"parameters": n_params, "save_dtype": args.save_dtype, "vocab_size": vocab_size},
            "training": {
                "tokens_seen": args.steps * args.batch_size * args.seq_len,
                "epochs": round(args.steps * args.batch_size * args.seq_len / train_stream.numel(), 2),
                "train_seconds": round(train_seconds, 1),
                "torch": torch.__version__, "threads": args.threads,
                "curve": curve,
            },
            "results": {
                "unit": "nats/token (cross-entropy of the next token)",
                "train_loss": round(train_loss, 4),
                "heldout_loss": round(heldout_loss, 4),
                "unigram_heldout_cross_entropy": round(unigram, 4),
                "heldout_windows": heldout_rows.shape[0],
                "heldout_subset_windows": test_rows.shape[0],
                "heldout_subset_loss": round(heldout_subset_loss, 4),
                "heldout_loss_bound": round(heldout_subset_loss + BOUND_MARGIN, 4),
                "bound_rule": f"heldout_subset_loss + {BOUND_MARGIN} (the subset is {TEST_SUBSET_WINDOWS} windows "
                              f"spread evenly over the held-out stream; see subset())",
            },
            "wall_seconds": round(time.perf_counter() - t_start, 1),
        }
        (tmp / "training_log.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(record, config), encoding="utf-8")
        files_now = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        log("files: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in files_now.items())
            + f"; total {sum(files_now.values()) / 1e6:.2f} MB")
        # mkdtemp and the atomic writes create private files; a package folder is world-readable.
        tmp.chmod(0o755)
        for path in tmp.iterdir():
            path.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"wrote {out} in {(time.perf_counter() - t_start) / 60:.1f} min")
    return 0


def _explicit_args(argv: Sequence[str] | None) -> list[str]:
    args = list(sys.argv[1:] if argv is None else argv)
    # The output folder is not part of the recipe.
    out: list[str] = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--out":
            skip = True
            continue
        if a.startswith("--out="):
            continue
        out.append(a)
    return out


def model_card(record: dict[str, Any], config: Any) -> str:
    r, c, t, m = record["results"], record["corpus"], record["training"], record["model"]
    return f"""# neox default model

A small GPT-NeoX trained from scratch on the Python standard library's source, shipped inside the
`neox` package so that `neox generate "def fibonacci(n):"` works offline, out of the box. It is a
demonstration and test model: it writes Python-looking text, not correct programs.

| | |
|---|---|
| architecture | GPT-NeoX (`GPTNeoXForCausalLM`): parallel residual, rotary on {int(config.rotary_pct * 100)}% of each head, untied `embed_out` |
| size | {m['parameters']:,} parameters; hidden {config.hidden_size}, {config.num_hidden_layers} layers, {config.num_attention_heads} heads, MLP {config.intermediate_size} |
| context | {config.max_position_embeddings} tokens |
| weights | `model.safetensors`, {m['save_dtype']} (load with `dtype=torch.float32` on CPU) |
| tokenizer | byte-level BPE, {m['vocab_size']} tokens (NFC + ByteLevel, `<|endoftext|>` = 0, `<|padding|>` = 1) |
| corpus | {c['files']} `.py` files of the Python {c['python']} standard library ({c['bytes'] / 1e6:.1f} MB), test folders and `encodings/` skipped |
| split | {c['heldout_files']} files held out (every {HELDOUT_EVERY}th by sorted path): {c['heldout_tokens']:,} tokens; {c['train_tokens']:,} training tokens |
| training | {t['tokens_seen']:,} tokens ({t['epochs']} epochs), AdamW, cosine LR, {t['train_seconds'] / 60:.0f} min on {t['threads']} CPU threads (torch {t['torch']}) |

## Held-out loss

| | nats/token |
|---|---|
| unigram baseline (training-split token frequencies) | {r['unigram_heldout_cross_entropy']:.3f} |
| this model, held-out files | **{r['heldout_loss']:.3f}** (perplexity {math.exp(r['heldout_loss']):.1f}) |
| this model, training files | {r['train_loss']:.3f} |

Measured on the saved {m['save_dtype']} weights, over all {r['heldout_windows']} non-overlapping
{config.max_position_embeddings}-token windows of the held-out files. `tests/test_default_model.py`
re-scores {r['heldout_subset_windows']} of those windows and requires a loss below
{r['heldout_loss_bound']:.3f} ({r['bound_rule'].split(' (')[0]}).

## Reproduce

    {record['command']}

The run is deterministic for a given Python (the corpus is its standard library), torch version and
thread count; `training_log.json` records all of them, the corpus hash and the loss curve.

## License

The training corpus is the Python standard library, © Python Software Foundation, distributed under
the PSF License Agreement (PSF-2.0). The weights and tokenizer are released with this project under
Apache-2.0.
"""


if __name__ == "__main__":
    sys.exit(main())
