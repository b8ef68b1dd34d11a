#!/usr/bin/env python3
"""Decoder speed of lloco vs llama.cpp, in one run, same GGUF and threads.

Measures, for each thread count: prefill tokens/s at 512 and 2048 tokens,
decode tokens/s (128 tokens after a 512-token prompt), for llama.cpp
(llama-cpp-python, installed by bench/setup-peer.sh) and lloco
(build/bench/benchmark-decoder, which also measures memory bandwidth and
peak RSS). Prints one JSON line per result, then the ratios.

    python3 bench/compare_llamacpp.py [--threads 1,2] [--reps 3]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tokens(n, n_vocab):
    return [(i * 7919 + 100) % (n_vocab - 200) + 100 for i in range(n)]


def llama_cpp_bench(model, threads, prefill, decode_ctx, n_decode, reps):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_batch=512, n_ubatch=512,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    toks = tokens(max(max(prefill), decode_ctx + n_decode), llm.n_vocab())
    out = {}
    for n in prefill:
        best = 1e30
        for _ in range(reps):
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(toks[:n])
            best = min(best, time.perf_counter() - t0)
        out[f"prefill_{n}"] = n / best
    best = 1e30
    for _ in range(reps):
        llm.reset()
        llm.eval(toks[:decode_ctx])
        t0 = time.perf_counter()
        for i in range(n_decode):
            llm.eval([toks[decode_ctx + i]])
        best = min(best, time.perf_counter() - t0)
    out["decode"] = n_decode / best
    del llm
    return out


def lloco_bench(binary, model, threads, prefill, decode_ctx, n_decode, reps):
    res = subprocess.run([binary, "-m", model, "--threads", str(threads),
                          "--prefill", ",".join(map(str, prefill)), "--decode-ctx", str(decode_ctx),
                          "--decode", str(n_decode), "--reps", str(reps)],
                         check=True, capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        r = json.loads(line)
        if r.get("bench") == "prefill":
            out[f"prefill_{r['tokens']}"] = r["tok_s"]
        elif r.get("bench") == "decode":
            out["decode"] = r["tok_s"]
            out["bandwidth_gb_s"] = r["bandwidth_gb_s"]
            out["bound_tok_s"] = r["bound_tok_s"]
            out["weight_bytes"] = r["weight_bytes"]
        elif r.get("bench") == "memory":
            out["peak_rss_mib"] = r["peak_rss_mib"]
            out["kv_mib"] = r["kv_mib"]
        elif r.get("check") and not r.get("ok"):
            sys.exit(f"lloco correctness check failed: {line}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "benchmark-decoder"))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    prefill, decode_ctx, n_decode = [512, 2048], 512, 128
    model_mib = os.path.getsize(args.model) / 2**20
    summary = []
    for t in map(int, args.threads.split(",")):
        lc = lloco_bench(args.bench, args.model, t, prefill, decode_ctx, n_decode, args.reps)
        ll = llama_cpp_bench(args.model, t, prefill, decode_ctx, n_decode, args.reps)
        for key in [f"prefill_{n}" for n in prefill] + ["decode"]:
            r = {"bench": key, "threads": t, "lloco_tok_s": round(lc[key], 2),
                 "llama_cpp_tok_s": round(ll[key], 2), "ratio": round(lc[key] / ll[key], 3)}
            if key == "decode":
                r["bandwidth_gb_s"] = lc["bandwidth_gb_s"]
                r["lloco_fraction_of_bound"] = round(lc[key] / lc["bound_tok_s"], 3)
                r["llama_cpp_fraction_of_bound"] = round(ll[key] / lc["bound_tok_s"], 3)
            print(json.dumps(r))
            summary.append(r)
        limit = model_mib + lc["kv_mib"] + 64
        print(json.dumps({"bench": "peak_rss", "threads": t, "lloco_mib": lc["peak_rss_mib"],
                          "model_mib": round(model_mib, 1), "kv_mib": lc["kv_mib"],
                          "limit_mib": round(limit, 1), "ok": lc["peak_rss_mib"] <= limit}))
    print("\nratio lloco / llama.cpp (same GGUF, same threads, one run):")
    for r in summary:
        print(f"  {r['bench']:>13} threads={r['threads']}: {r['lloco_tok_s']:9.1f} vs "
              f"{r['llama_cpp_tok_s']:9.1f} tok/s  -> {r['ratio']:.2f}x")
    print(f"  python peak RSS (llama.cpp side) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
