#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) on CPU, for the LLM service's tests against
# a server nobody here wrote (tests/integration/test_llm_openai_server.py), or a CPU box's LLM_BACKEND=openai.
#
#   bash scripts/install_llama_cpp.sh                      build once per machine, install into its venv
#   bash scripts/install_llama_cpp.sh convert HF_DIR OUT   a Hugging Face checkpoint -> OUT (GGUF, f32)
#
# The source build takes minutes on two cores, so the wheel is built once into the cache and reused; the
# venv lives in the cache too (outside the tree: git, ruff and pytest never see it). Knobs: IMG_POD_CACHE
# (~/.cache/img_pod), LLAMA_CPP_VERSION (0.3.36), LLAMA_CPP_VENV (cache/venv-llamacpp-VERSION),
# LLAMA_CPP_BUILD_JOBS (2), PYTHON (python3: builds the wheel and the venv), IMG_POD_PYTHON (a python with
# torch and transformers, for the conversion: default ./.venv/bin/python).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
version=${LLAMA_CPP_VERSION:-0.3.36}
cache=${IMG_POD_CACHE:-$HOME/.cache/img_pod}
venv=${LLAMA_CPP_VENV:-$cache/venv-llamacpp-$version}
py=${PYTHON:-python3}
sdist=$cache/sdist/llama_cpp_python-$version.tar.gz
# The converter and the gguf package it was written against, from the same sdist (vendor/llama.cpp).
src=$cache/llama.cpp-src-$version

fetch_sources() {
  if [ ! -f "$sdist" ]; then
    "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache/sdist"
  fi
  if [ ! -f "$src/convert_hf_to_gguf.py" ]; then
    local tmp
    tmp=$(mktemp -d)
    tar -xzf "$sdist" -C "$tmp" --wildcards "*/vendor/llama.cpp/convert_hf_to_gguf.py" \
      "*/vendor/llama.cpp/conversion/*" "*/vendor/llama.cpp/gguf-py/*"
    rm -rf "$src"
    mv "$tmp/llama_cpp_python-$version/vendor/llama.cpp" "$src"
    rm -rf "$tmp"
  fi
}

if [ "${1:-}" = convert ]; then
  [ $# -eq 3 ] || { echo "usage: $0 convert HF_DIR OUT.gguf" >&2; exit 2; }
  fetch_sources
  mkdir -p "$(dirname "$3")"
  # f32: the tiny test checkpoint is a few MB, and no quantisation error muddies what the tests see.
  # LLAMA_CPP_PRE_TOKENIZER names the BPE pre-tokenizer where the converter cannot recognise it by its hash:
  # the tiny test tokenizer is a 600-token BPE with GPT-2's byte-level regex (shared/tiny_models), "gpt-2".
  PYTHONPATH="$src/gguf-py:$src" "${IMG_POD_PYTHON:-$repo/.venv/bin/python}" - "$src" "$2" "$3" >&2 <<'PY'
import os
import runpy
import sys

src, model, out = sys.argv[1:4]
if pre := os.environ.get("LLAMA_CPP_PRE_TOKENIZER"):
    import conversion.base

    conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [f"{src}/convert_hf_to_gguf.py", model, "--outfile", out, "--outtype", "f32"]
runpy.run_path(sys.argv[0], run_name="__main__")
PY
  exit 0
fi

fetch_sources
# Made first: find on a missing folder fails, and under pipefail that failure would end the script here.
mkdir -p "$cache/wheels"
wheel=$(find "$cache/wheels" -maxdepth 1 -name "llama_cpp_python-$version-*.whl" | head -n 1)
if [ -z "$wheel" ]; then
  echo "building llama-cpp-python $version (CPU only, ${LLAMA_CPP_BUILD_JOBS:-2} jobs): minutes" >&2
  start=$SECONDS
  # CPU only, portable (no -march=native: the cache may move to another CPU of the same arch), and only
  # the library: llama.cpp's own tools, examples and tests are not needed by the Python server.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_BLAS=OFF -DGGML_OPENMP=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
-DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=${LLAMA_CPP_BUILD_JOBS:-2} \
    "$py" -m pip wheel -q --no-deps -w "$cache/wheels" "$sdist"
  wheel=$(find "$cache/wheels" -maxdepth 1 -name "llama_cpp_python-$version-*.whl" | head -n 1)
  echo "built $(basename "$wheel") in $((SECONDS - start)) s" >&2
fi
if ! "$venv/bin/python" -c "import llama_cpp.server.app" >/dev/null 2>&1; then
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "${wheel}[server]"
fi
"$venv/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, 'in $venv')"
