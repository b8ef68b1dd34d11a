#!/usr/bin/env python3
"""Greedy parity of lloco with llama.cpp on the default model.

For each fixed prompt: the prompt token ids must be identical, the 64-token
greedy continuations must be identical, and the logits after the prompt must
agree within the stated bound. llama.cpp runs in-process through
llama-cpp-python (install it with bench/setup-peer.sh); lloco runs as the
`lloco generate` binary. Exits 1 on any mismatch.

    python3 tests/tools/compare_llamacpp.py [--lloco build/lloco] [--model PATH]
                                            [--threads N] [--backend cpu|cpu-ref]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "Write a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The history of the Roman Empire begins",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nExplain in two sentences why the sky is blue.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village at the edge of a forest,",
    "<|im_start|>user\nWrite a long story about a dragon who learns to bake bread.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nDescribe, step by step, how to plant a vegetable garden.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "The following is a detailed description of the water cycle. Water evaporates from",
    "#include <stdio.h>\n\n/* Print the first twenty prime numbers. */\nint main(void) {\n",
]
# Prompts whose continuation must run the full N_GEN tokens (no early EOS),
# so that long greedy runs are compared, not only short answers.
MIN_FULL_LENGTH = 5
N_GEN = 64
# lloco repeats the float arithmetic of GGML's AVX512 CPU path op for op, so
# against a llama.cpp built for AVX512 the logits are identical (NMSE 0);
# GGML builds for other ISAs round differently in places (its AVX2 exp and
# reductions), which this bound still admits. Greedy tokens must match
# exactly either way.
LOGIT_NMSE_BOUND = 1e-4


def last_logits(llm):
    """Logits of the last evaluated position, read from the context (the
    wrapper's `scores` array is not filled by every llama-cpp-python)."""
    import llama_cpp

    p = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(p, shape=(llm.n_vocab(),)).astype(np.float32)


def llama_greedy(llm, ids, n_gen):
    import llama_cpp

    llm.reset()
    llm.eval(ids)
    first = last_logits(llm)
    logits = first
    out = []
    for _ in range(n_gen):
        tok = int(np.argmax(logits))
        if llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok):
            break
        out.append(tok)
        if len(out) == n_gen:
            break
        llm.eval([tok])
        logits = last_logits(llm)
    return first, out


def lloco_greedy(binary, model, prompt, n_gen, threads, backend):
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = os.path.join(tmp, "ids.json")
        logits_path = os.path.join(tmp, "logits.f32")
        subprocess.run([binary, "generate", "-m", model, "-p", prompt, "-n", str(n_gen),
                        "--threads", str(threads), "--backend", backend, "--ids-out", ids_path,
                        "--logits-out", logits_path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(ids_path) as f:
            ids = json.load(f)
        logits = np.fromfile(logits_path, dtype=np.float32)
    return ids["prompt"], logits, ids["generated"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lloco", default=os.path.join(ROOT, "build", "lloco"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpu", choices=["cpu", "cpu-ref"])
    args = ap.parse_args()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=1024, n_threads=args.threads,
                          n_threads_batch=args.threads, flash_attn=False, verbose=False)
    failures = 0
    full_length = 0
    worst = 0.0
    for i, prompt in enumerate(PROMPTS):
        ref_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        ids, logits, gen = lloco_greedy(args.lloco, args.model, prompt, N_GEN, args.threads,
                                         args.backend)
        ref_first, ref_gen = llama_greedy(llm, ref_ids, N_GEN)
        nmse = float(np.sum((logits - ref_first) ** 2) / np.sum(ref_first ** 2))
        maxdiff = float(np.max(np.abs(logits - ref_first)))
        worst = max(worst, nmse)
        same_prompt = ids == list(ref_ids)
        same_gen = gen == ref_gen
        agree = next((k for k in range(min(len(gen), len(ref_gen))) if gen[k] != ref_gen[k]),
                     min(len(gen), len(ref_gen)))
        ok = same_prompt and same_gen and nmse <= LOGIT_NMSE_BOUND
        failures += not ok
        full_length += ok and len(gen) == N_GEN
        print(json.dumps({"prompt": i, "prompt_tokens": len(ref_ids), "prompt_ids_equal": same_prompt,
                          "generated": len(gen), "llama_cpp_generated": len(ref_gen),
                          "tokens_equal": same_gen, "agree_prefix": agree,
                          "logits_nmse": nmse, "logits_max_abs_diff": maxdiff, "ok": ok}))
        if not same_gen:
            print("  lloco:     " + llm.detokenize(gen).decode(errors="replace")[:200].replace("\n", "\\n"))
            print("  llama.cpp: " + llm.detokenize(ref_gen).decode(errors="replace")[:200].replace("\n", "\\n"))
    print(f"{len(PROMPTS) - failures} passed, {failures} failed, {full_length} identical over all "
          f"{N_GEN} tokens (need {MIN_FULL_LENGTH}); worst logits NMSE {worst:.3g}, "
          f"bound {LOGIT_NMSE_BOUND:g}")
    return 1 if failures or full_length < MIN_FULL_LENGTH else 0


if __name__ == "__main__":
    sys.exit(main())
