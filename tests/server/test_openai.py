#!/usr/bin/env python3
"""The official `openai` Python client against a real `lloco serve`: a tiny
store ingested with the CLI, then models, chat (plain and streamed, with
lloco's own fields), completions, and errors raised as the client's typed
exceptions. Skips (exit 77) when the `openai` package is missing.

usage: test_openai.py LLOCO_BINARY SOURCE_DIR
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

SKIP = 77

try:
    import openai
except ImportError as e:
    # ctest may have been configured before scripts/setup.sh made the venv
    venv = os.path.join(sys.argv[2] if len(sys.argv) > 2 else ".", ".deps", "venv")
    python = os.path.join(venv, "bin", "python3")
    if os.path.exists(python) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(python, [python, *sys.argv])
    print(f"SKIP: the openai package is not installed ({e}); scripts/setup.sh test installs it "
          "into .deps/venv")
    sys.exit(SKIP)

LLOCO, SRC = sys.argv[1], sys.argv[2]
FIX = os.path.join(SRC, "tests", "fixtures")
MODEL = os.path.join(FIX, "tiny-llama", "hf")
EMBEDDER = os.path.join(FIX, "embedder", "tiny")
LORA = os.path.join(FIX, "lora")
MODEL_NAME = "hf"  # the model's name as the API reports it: the directory's

DOCS = [
    {"id": "rivers", "group": "g1", "text": "The river Alder rises in the northern hills and runs "
     "south past the old mill, turning three wheels before the stone bridge at Marrow."},
    {"id": "mills", "group": "g1", "text": "The mill at Alder Ford ground oats and barley for two "
     "hundred years; its last miller kept a ledger of every sack and every storm."},
    {"id": "tea", "text": "Green tea is steeped in water below boiling for two or three minutes; "
     "black tea takes boiling water and four minutes, milk after."},
]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)


def run(*args):
    p = subprocess.run([LLOCO, *args], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        print(p.stdout, p.stderr, sep="\n")
        raise SystemExit(f"lloco {args[0]} failed with {p.returncode}")
    return p


def start_server(store):
    cmd = [LLOCO, "serve", "--store", store, "-m", MODEL, "--embedder", EMBEDDER,
           "--adapters-dir", LORA, "--port", "0", "--threads", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines, found = [], threading.Event()
    port = []

    def drain():  # keeps reading so the server never blocks on a full pipe
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r" on http://[^:]+:(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))
                found.set()
        found.set()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    found.wait(120)
    if not port:
        proc.kill()
        raise SystemExit("lloco serve did not start:\n" + "".join(lines))
    return proc, port[0], lines, t


def main():
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    with tempfile.TemporaryDirectory(prefix="lloco-openai-") as tmp:
        docs = os.path.join(tmp, "docs.jsonl")
        with open(docs, "w") as f:
            for d in DOCS:
                f.write(json.dumps(d) + "\n")
        store = os.path.join(tmp, "store")
        run("ingest", "--store", store, "-m", MODEL, "--embedder", EMBEDDER,
            "--segment-tokens", "32", "--n-summary", "4", docs)
        run("adapters", "assign", "--store", store, "--dir", LORA, "-m", MODEL, "g1", "r8-qkvo")

        proc, port, lines, drain = start_server(store)
        try:
            exercise(port)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            drain.join(5)
        check(rc == 0, f"lloco serve exited with {rc} after SIGTERM:\n" + "".join(lines))

    if failures:
        print(f"{len(failures)} checks failed")
        return 1
    print("openai client: all checks passed")
    return 0


def exercise(port):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
                           timeout=60)

    ids = [m.id for m in client.models.list()]
    check(ids and ids[0] == MODEL_NAME, f"models: {ids}")
    check("r8-qkvo" in ids, f"adapters among the models: {ids}")

    msgs = [{"role": "user", "content": "Where does the river Alder run?"}]
    extra = {"mode": "text", "top_k": 2, "group": "g1", "ignore_eos": True}
    r = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=8,
                                       temperature=0, extra_body=extra)
    c = r.choices[0]
    check(r.object == "chat.completion", f"object {r.object}")
    check(isinstance(c.message.content, str) and c.message.role == "assistant", "message")
    check(c.finish_reason == "length", f"finish_reason {c.finish_reason}")
    check(r.usage.completion_tokens == 8 and
          r.usage.total_tokens == r.usage.prompt_tokens + 8, f"usage {r.usage}")
    lo = r.model_dump().get("lloco") or {}
    check(lo.get("mode") == "text" and lo.get("group") == "g1" and lo.get("adapter") == "r8-qkvo",
          f"lloco {lo}")
    chunks = lo.get("chunks") or []
    check(1 <= len(chunks) <= 2 and all(ch["doc_id"] in ("rivers", "mills") for ch in chunks),
          f"chunks {chunks}")
    check(r.model == "r8-qkvo", f"model {r.model}")

    # streamed: the same text, a finish reason, a usage chunk
    text, finish, usage, n = "", None, None, 0
    stream = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body=extra)
    for chunk in stream:
        n += 1
        check(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object}")
        if chunk.choices:
            d = chunk.choices[0].delta
            text += d.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    check(n >= 3, f"{n} chunks")
    check(text == c.message.content, f"streamed {text!r} != {c.message.content!r}")
    check(finish == "length", f"streamed finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == 8, f"streamed usage {usage}")

    # completions, compressed and without retrieval
    for mode in ("compressed", "none"):
        r = client.completions.create(model=MODEL_NAME, prompt="The mill at Alder Ford",
                                      max_tokens=6, temperature=0,
                                      extra_body={"mode": mode, "ignore_eos": True})
        check(r.object == "text_completion" and isinstance(r.choices[0].text, str),
              f"completion {mode}: {r}")
        check(r.usage.completion_tokens == 6, f"completion {mode} usage {r.usage}")
        s = client.completions.create(model=MODEL_NAME, prompt="The mill at Alder Ford",
                                      max_tokens=6, temperature=0, stream=True,
                                      extra_body={"mode": mode, "ignore_eos": True})
        streamed = "".join(ch.choices[0].text for ch in s if ch.choices)
        check(streamed == r.choices[0].text, f"completion {mode}: streamed {streamed!r} != "
              f"{r.choices[0].text!r}")

    # an adapter named as the model
    r = client.completions.create(model="r1-mlp-f16", prompt="Hi", max_tokens=2,
                                  extra_body={"mode": "none"})
    check(r.model == "r1-mlp-f16", f"adapter as model: {r.model}")

    # errors as the client's exceptions
    def raises(exc, what, fn):
        try:
            fn()
        except exc as e:
            body = e.body if isinstance(e.body, dict) else {}
            check(isinstance(body.get("message"), str), f"{what}: error body {e.body}")
            return
        except Exception as e:  # noqa: BLE001 - report the wrong kind
            check(False, f"{what}: raised {type(e).__name__}: {e}")
            return
        check(False, f"{what}: no {exc.__name__}")

    raises(openai.NotFoundError, "unknown model", lambda: client.chat.completions.create(
        model="nope", messages=msgs, max_tokens=2))
    raises(openai.NotFoundError, "unknown group", lambda: client.chat.completions.create(
        model=MODEL_NAME, messages=msgs, max_tokens=2,
        extra_body={"mode": "text", "group": "nosuch"}))
    raises(openai.BadRequestError, "n=2", lambda: client.chat.completions.create(
        model=MODEL_NAME, messages=msgs, max_tokens=2, n=2))
    raises(openai.BadRequestError, "over the context", lambda: client.completions.create(
        model=MODEL_NAME, prompt="x" * 600, max_tokens=2, extra_body={"mode": "none"}))


if __name__ == "__main__":
    sys.exit(main())
