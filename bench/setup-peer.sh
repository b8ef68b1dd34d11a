#!/usr/bin/env bash
# Installs the peer lloco is measured against: llama.cpp through
# llama-cpp-python, built from its PyPI source distribution for this CPU.
# AMX is left out: on the machines lloco is measured on, llama.cpp's AMX
# kernels crash (SIGSEGV in ggml_backend_amx_mul_mat), so the peer uses its
# AVX-512/VNNI paths, the best that runs here.
set -euo pipefail
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
if python3 -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.__version__ == '$VERSION' else 1)" 2>/dev/null &&
   python3 -c "import llama_cpp, sys; sys.exit(1 if b'AMX' in llama_cpp.llama_print_system_info() else 0)" 2>/dev/null; then
    exit 0
fi
flags="-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
grep -q avx2 /proc/cpuinfo && flags="$flags -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
grep -q avx512f /proc/cpuinfo && flags="$flags -DGGML_AVX512=ON"
grep -q avx512_vnni /proc/cpuinfo && flags="$flags -DGGML_AVX512_VNNI=ON"
grep -q avx512vbmi /proc/cpuinfo && flags="$flags -DGGML_AVX512_VBMI=ON"
grep -q avx512_bf16 /proc/cpuinfo && flags="$flags -DGGML_AVX512_BF16=ON"
grep -q avx_vnni /proc/cpuinfo && flags="$flags -DGGML_AVX_VNNI=ON"
echo "building llama-cpp-python $VERSION with: $flags" >&2
CMAKE_ARGS="$flags" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    python3 -m pip install --quiet --force-reinstall --no-cache-dir --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$VERSION"
