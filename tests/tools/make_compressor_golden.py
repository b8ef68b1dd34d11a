#!/usr/bin/env python3
"""Writes tests/fixtures/compressor/: reference slots of the AutoCompressor
(LLoCO) and ICAE compression procedures, computed with PyTorch +
transformers on the tiny-llama fixture model, for lloco's compressor to match.

The procedures, written out independently of lloco's C code:
  AutoCompressor: segment k's input embeddings are [summaries of the earlier
    segments, if accumulating] ++ [the segment's token embeddings] ++
    [the n_summary rows of embed_summary]; positions 0..len-1, causal; its
    slots are the final hidden states (after the last RMSNorm) at the last
    n_summary positions. Accumulated summaries that would not fit in the
    model's context beside a segment and its summary tokens are dropped,
    oldest segment first.
  ICAE: each segment alone followed by k memory-token embeddings; slots at
    the memory positions.
Without a trained embed_summary / memory_token_embed every row is the EOS
token's embedding.

`hf-ac/` is the tiny model plus the extra tensors an AutoCompressor / ICAE
checkpoint carries (`embed_summary.weight`, `memory_token_embed.weight`), as
a two-shard checkpoint whose first shard is the tiny model itself (symlinks).

Run: python3 tests/tools/make_compressor_golden.py  (needs torch,
transformers, safetensors, numpy). Seeded and deterministic.
"""
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "fixtures" / "tiny-llama" / "hf"
OUT = ROOT / "tests" / "fixtures" / "compressor"
SEED = 4321
EXTRA_ROWS = 64
N_DOC = 1000

CASES = [
    # name, model dir (under tests/fixtures), method, segment_tokens, n_summary, accumulate, n_tokens
    ("ac_trained", "compressor/hf-ac", "autocompressor", 24, 4, 1, 70),
    ("ac_eos", "tiny-llama/hf", "autocompressor", 24, 4, 1, 70),
    ("ac_noacc", "compressor/hf-ac", "autocompressor", 24, 4, 0, 70),
    ("icae_trained", "compressor/hf-ac", "icae", 24, 5, 0, 70),
    ("icae_eos", "tiny-llama/hf", "icae", 32, 3, 0, 50),
    ("ac_window", "compressor/hf-ac", "autocompressor", 100, 50, 1, N_DOC),
]


def write_model_dir(rng, d_model, names):
    ac = OUT / "hf-ac"
    ac.mkdir(parents=True, exist_ok=True)
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]:
        link = ac / f
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(TINY / f, ac), link)
    extra = {
        "embed_summary.weight": rng.normal(0, 0.5, (EXTRA_ROWS, d_model)).astype(np.float32),
        "memory_token_embed.weight": rng.normal(0, 0.5, (EXTRA_ROWS, d_model)).astype(np.float32),
    }
    save_file(extra, str(ac / "extra.safetensors"))
    weight_map = {n: "model.safetensors" for n in names}
    weight_map.update({n: "extra.safetensors" for n in extra})
    with open(ac / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=1, sort_keys=True)
    return {k: torch.from_numpy(v) for k, v in extra.items()}


def hidden_at_end(model, embeds, n_out):
    with torch.no_grad():
        h = model.model(inputs_embeds=embeds[None]).last_hidden_state[0]
    return h[-n_out:]


def compress(model, tok_embd, summary, tokens, method, seg, ns, accumulate, n_ctx):
    slots, acc = [], []
    for tb in range(0, len(tokens), seg):
        part = tok_embd[torch.tensor(tokens[tb:tb + seg])]
        if method == "autocompressor" and accumulate:
            while len(acc) * ns > n_ctx - len(part) - ns:
                acc.pop(0)
            prefix = acc
        else:
            prefix = []
        x = torch.cat(prefix + [part, summary[:ns]], 0)
        s = hidden_at_end(model, x, ns)
        slots.append(s)
        acc.append(s)
    return torch.cat(slots, 0)


def main():
    rng = np.random.default_rng(SEED)
    model = LlamaForCausalLM.from_pretrained(TINY, torch_dtype=torch.float32).eval()
    cfg = model.config
    tok_embd = model.model.embed_tokens.weight.detach()
    with safe_open(str(TINY / "model.safetensors"), "np") as f:
        names = list(f.keys())
    extra = write_model_dir(rng, cfg.hidden_size, names)
    eos = json.load(open(TINY / "config.json"))["eos_token_id"]
    eos_rows = tok_embd[eos][None].repeat(EXTRA_ROWS, 1)
    tokens = rng.integers(0, cfg.vocab_size, N_DOC).tolist()
    ref = {"tokens": tokens, "n_ctx": cfg.max_position_embeddings, "cases": []}
    for name, mdir, method, seg, ns, accumulate, n_tok in CASES:
        if mdir == "tiny-llama/hf":
            summary, init = eos_rows, "eos_row"
        elif method == "icae":
            summary, init = extra["memory_token_embed.weight"], "memory_token_embed"
        else:
            summary, init = extra["embed_summary.weight"], "embed_summary"
        slots = compress(model, tok_embd, summary, tokens[:n_tok], method, seg, ns, accumulate,
                         cfg.max_position_embeddings)
        slots.numpy().astype("<f4").tofile(OUT / f"{name}.f32")
        ref["cases"].append({"name": name, "model": mdir, "method": method,
                             "segment_tokens": seg, "n_summary": ns, "accumulate": accumulate,
                             "n_tokens": n_tok, "summary_init": init,
                             "n_segments": (n_tok + seg - 1) // seg})
    with open(OUT / "ref.json", "w") as f:
        json.dump(ref, f, indent=1)


if __name__ == "__main__":
    main()
