#!/usr/bin/env python3
"""benchmark_server: the online path of lloco, measured through its HTTP API.

Builds a store from one ~8k-token document (the GPL-3 text every Debian
system has), starts `lloco serve` on an ephemeral port, checks that answers
come back, then measures, in one run on this machine:

  overhead     one streamed completion vs `lloco generate` on the same prompt
               (decode tokens/s seen by the client vs generate's --stats)
  concurrency  1, 4, 16 and 64 concurrent streaming clients: aggregate
               tokens/s, p50/p99 time to first token, p50/p99 time per token
  lloco        answer latency for a question over the document in
               `compressed` vs `full` mode (the LLoCO effect)

One JSON object per result line on stdout, a summary on stderr.

    bench/benchmark_server.py [--lloco build/lloco] [--threads 2] [--tokens 64]
                              [--levels 1,4,16,64] [--store DIR]
"""
import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = "/usr/share/common-licenses/GPL-3"
QUESTIONS = [
    "Can I charge a fee for conveying copies of the program?",
    "What must I do when I distribute the program in object code form?",
    "Does the license give any warranty for the program?",
    "What happens to my license if I violate the terms?",
    "Can I add additional permissions to the licensed work?",
    "How does the license treat patents held by contributors?",
    "What is the corresponding source of a work?",
    "May I sublicense the program to others?",
]


def pct(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def emit(obj):
    print(json.dumps(obj), flush=True)


class Server:
    def __init__(self, lloco, store, threads, max_seqs):
        self.proc = subprocess.Popen(
            [lloco, "serve", "--store", store, "--port", "0", "--threads", str(threads),
             "--max-seqs", str(max_seqs), "--max-queue", "256"],
            stderr=subprocess.PIPE, text=True)
        self.port = None
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            m = re.search(r"on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            self.proc.kill()
            sys.exit("benchmark_server: lloco serve did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def post(self, path, body):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError("%s -> %d %s" % (path, r.status, data[:300]))
        return json.loads(data)

    def stream(self, path, body):
        """Streams a completion; returns (arrival times of the text events, t0, final lloco object)."""
        body = dict(body, stream=True)
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        t0 = time.perf_counter()
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError("%s -> %d %s" % (path, r.status, r.read()[:300]))
        times, last = [], None
        for raw in r:
            line = raw.decode("utf-8").strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            ch = ev.get("choices") or []
            if ch and (ch[0].get("text") or (ch[0].get("delta") or {}).get("content")):
                times.append(time.perf_counter())
            if "lloco" in ev:
                last = ev["lloco"]
        c.close()
        return times, t0, last

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def build_store(lloco, store, threads):
    if os.path.exists(os.path.join(store, "data.mdb")):
        return
    subprocess.run([lloco, "ingest", "--store", store, "--threads", str(threads), DOC], check=True,
                   stdout=subprocess.DEVNULL)


def overhead(srv, lloco, threads, tokens):
    prompt = "The history of the printing press begins"
    out = subprocess.run([lloco, "generate", "-p", prompt, "-n", str(tokens), "--threads", str(threads),
                          "--stats", "--ignore-eos"],
                         capture_output=True, text=True, check=True)
    m = re.search(r"generated (\d+) tokens, ([\d.]+) tok/s", out.stderr)
    if not m:
        sys.exit("benchmark_server: no decode speed in generate's --stats: " + out.stderr[-300:])
    gen_n, gen_rate = int(m.group(1)), float(m.group(2))
    best = None
    for _ in range(2):
        times, t0, _ = srv.stream("/v1/completions", {"prompt": prompt, "max_tokens": tokens,
                                                      "temperature": 0, "mode": "none",
                                                      "ignore_eos": True})
        if len(times) < 2:
            sys.exit("benchmark_server: the streamed answer has %d pieces" % len(times))
        rate = (len(times) - 1) / (times[-1] - times[0])
        best = rate if best is None or rate > best else best
    r = {"bench": "server_overhead", "threads": threads, "tokens": tokens,
         "generate_tok_s": round(gen_rate, 2), "server_stream_tok_s": round(best, 2),
         "server_vs_generate": round(best / gen_rate, 3), "generate_tokens": gen_n}
    emit(r)
    return r


def concurrency(srv, level, tokens):
    results, lock = [], threading.Lock()

    def client(i):
        q = QUESTIONS[i % len(QUESTIONS)]
        times, t0, _ = srv.stream("/v1/chat/completions", {
            "messages": [{"role": "user", "content": q}], "max_tokens": tokens,
            "temperature": 0, "mode": "compressed", "top_k": 2, "ignore_eos": True})
        with lock:
            results.append((t0, times))

    t_start = time.perf_counter()
    th = [threading.Thread(target=client, args=(i,)) for i in range(level)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t_start
    ttft = [times[0] - t0 for t0, times in results if times]
    itl = [b - a for _, times in results for a, b in zip(times, times[1:])]
    n_tok = sum(len(times) for _, times in results)
    r = {"bench": "server_concurrency", "clients": level, "tokens_each": tokens,
         "tok_s": round(n_tok / wall, 2), "ttft_p50_s": round(pct(ttft, 50), 3),
         "ttft_p99_s": round(pct(ttft, 99), 3), "per_token_p50_s": round(pct(itl, 50), 4),
         "per_token_p99_s": round(pct(itl, 99), 4), "wall_s": round(wall, 2)}
    emit(r)
    return r


def lloco_effect(srv, tokens):
    q = "What does the license say about the warranty of the program?"
    out = {}
    for mode in ("compressed", "full"):
        # the whole document either way: all its chunks' slots, or all its text
        body = {"messages": [{"role": "user", "content": q}], "max_tokens": tokens,
                "temperature": 0, "mode": mode, "doc_ids": [DOC], "top_k": 64,
                "ignore_eos": True}
        t0 = time.perf_counter()
        ans = srv.post("/v1/chat/completions", body)
        wall = time.perf_counter() - t0
        lo = ans["lloco"]
        out[mode] = {"latency_s": wall, "input_positions": lo["input_positions"],
                     "raw_tokens": lo["raw_tokens"], "prefill_s": lo["timings"]["prefill_s"],
                     "first_token_s": lo["timings"]["first_token_s"],
                     "completion_tokens": ans["usage"]["completion_tokens"]}
    c, f = out["compressed"], out["full"]
    r = {"bench": "lloco_effect", "tokens": tokens, "compressed": c, "full": f,
         "latency_ratio": round(f["latency_s"] / c["latency_s"], 2),
         "first_token_ratio": round(f["first_token_s"] / max(c["first_token_s"], 1e-9), 2)}
    emit(r)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lloco", default=os.path.join(ROOT, "build", "lloco"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--max-seqs", type=int, default=16)
    ap.add_argument("--store", default=None)
    a = ap.parse_args()
    tmp = None
    store = a.store
    if not store:
        tmp = tempfile.TemporaryDirectory(prefix="lloco-bench-server-")
        store = os.path.join(tmp.name, "store")
    build_store(a.lloco, store, a.threads)
    srv = Server(a.lloco, store, a.threads, a.max_seqs)
    try:
        # correctness first: an answer in every mode, with its accounting
        for mode in ("compressed", "text", "full", "none"):
            ans = srv.post("/v1/chat/completions", {
                "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 4,
                "temperature": 0, "mode": mode})
            ok = ans["choices"][0]["message"]["content"] is not None and ans["lloco"]["mode"] == mode
            emit({"check": "answer_" + mode, "ok": ok})
            if not ok:
                sys.exit(1)
        ov = overhead(srv, a.lloco, a.threads, a.tokens)
        levels = [concurrency(srv, int(x), a.tokens) for x in a.levels.split(",")]
        eff = lloco_effect(srv, 16)
    finally:
        srv.stop()
    print("server: one stream %.1f tok/s vs generate %.1f tok/s = %.3fx (target >= 0.95x)"
          % (ov["server_stream_tok_s"], ov["generate_tok_s"], ov["server_vs_generate"]), file=sys.stderr)
    for r in levels:
        print("  %2d clients: %7.1f tok/s  TTFT p50 %.3f s p99 %.3f s  per token p50 %.4f s p99 %.4f s"
              % (r["clients"], r["tok_s"], r["ttft_p50_s"], r["ttft_p99_s"], r["per_token_p50_s"],
                 r["per_token_p99_s"]), file=sys.stderr)
    print("LLoCO effect on a %d-token document: compressed %.2f s (%d positions) vs full %.2f s "
          "(%d positions) = %.1fx (target >= 10x)"
          % (eff["full"]["raw_tokens"], eff["compressed"]["latency_s"],
             eff["compressed"]["input_positions"], eff["full"]["latency_s"],
             eff["full"]["input_positions"], eff["latency_ratio"]), file=sys.stderr)


if __name__ == "__main__":
    main()
