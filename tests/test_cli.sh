#!/usr/bin/env bash
# The lloco binary end to end on the tiny fixture model and the default
# model: output, exit codes and error messages of each subcommand.
set -u
LLOCO=$1
SRC=$2
TINY=$SRC/tests/fixtures/tiny-llama
MODEL=${LLOCO_MODELS:-$SRC/models}/SmolLM2-135M-Instruct.Q4_1.gguf
pass=0
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect NAME STATUS PATTERN -- CMD...: CMD exits with STATUS and its
# stdout+stderr matches the extended regex PATTERN.
expect() {
    local name=$1 status=$2 pattern=$3
    shift 4
    "$@" >"$tmp/out" 2>&1 </dev/null
    local got=$?
    if [ "$got" -eq "$status" ] && grep -qE -- "$pattern" "$tmp/out"; then
        pass=$((pass + 1))
    else
        fail=$((fail + 1))
        echo "FAIL $name: exit $got (want $status), output:"
        head -c 600 "$tmp/out"
        echo
    fi
}

expect help 0 'generate -m MODEL' -- "$LLOCO" help
expect no-command 2 'usage' -- "$LLOCO"
expect unknown-command 2 "unknown command 'frobnicate'" -- "$LLOCO" frobnicate
expect unknown-option 2 "unknown option '--bogus'" -- "$LLOCO" generate -m "$TINY/tiny-q8_0.gguf" -p x --bogus
expect bad-number 2 "bad -n value 'many'" -- "$LLOCO" generate -m "$TINY/tiny-q8_0.gguf" -p x -n many
expect bad-top-p 2 "bad --top-p" -- "$LLOCO" generate -m "$TINY/tiny-q8_0.gguf" -p x --top-p 1.5
expect missing-prompt 2 'missing -p' -- "$LLOCO" generate -m "$TINY/tiny-q8_0.gguf"
expect missing-model 3 'not found.*setup.sh' -- "$LLOCO" generate -m "$tmp/none.gguf" -p hi
printf 'GGUF\003\000\000\000garbage' >"$tmp/bad.gguf"
expect damaged-model 1 'bad.gguf' -- "$LLOCO" generate -m "$tmp/bad.gguf" -p hi
expect inspect-tiny 0 'blk.1.ffn_down.weight +q4_1' -- "$LLOCO" inspect "$TINY/tiny-q4_1.gguf"
expect inspect-hf 0 'safetensors, 2 shard' -- "$LLOCO" inspect "$TINY/hf-sharded-bf16"
expect generate-tiny 0 '^' -- "$LLOCO" generate -m "$TINY/tiny-q4_1.gguf" -p "Hello" -n 8
expect generate-stdin 2 'missing -p' -- "$LLOCO" generate -m "$TINY/tiny-q4_1.gguf"

# The same seed gives the same sampled text; greedy ignores the seed.
"$LLOCO" generate -m "$TINY/tiny-q4_1.gguf" -p Hi -n 16 --temp 1 --seed 7 >"$tmp/a" 2>&1
"$LLOCO" generate -m "$TINY/tiny-q4_1.gguf" -p Hi -n 16 --temp 1 --seed 7 >"$tmp/b" 2>&1
if cmp -s "$tmp/a" "$tmp/b"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL seed: runs differ"; fi

if [ -f "$MODEL" ]; then
    expect smollm2-greedy 0 '[Pp]aris' -- "$LLOCO" generate -m "$MODEL" --chat -p "What is the capital of France?" -n 24
    expect smollm2-inspect 0 'pre-tokenizer smollm' -- "$LLOCO" inspect "$MODEL"
    printf 'What is 2+2?\n' | "$LLOCO" chat -m "$MODEL" -n 16 >"$tmp/chat" 2>&1
    if grep -q '4' "$tmp/chat"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL chat:"; cat "$tmp/chat"; fi
else
    fail=$((fail + 1))
    echo "FAIL default model missing: $MODEL (run ./scripts/setup.sh)"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
