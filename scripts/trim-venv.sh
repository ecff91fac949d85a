#!/bin/sh
# Removes from an installed virtualenv what serving never loads, in the image's install stage:
#
#   trim-venv.sh [--keep-symbols] /opt/podserve
#
# It runs after pip has checked every wheel against the lock's hashes: it changes installed
# files, never a wheel. The runtime image copies the trimmed venv, so the bytes are gone from
# its layers. Needs binutils' strip (the install stage has it; the runtime image does not).
# Python sources and their compiled .pyc stay: the root filesystem is read-only in the pod, so
# bytecode compiled at install time is what start-up uses.
set -eu
strip_symbols=1
if [ "${1:-}" = --keep-symbols ]; then strip_symbols=; shift; fi
venv=${1:?usage: trim-venv.sh [--keep-symbols] VENV}
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "trim-venv: no site-packages under $venv" >&2; exit 2; }
before=$(du -sk "$venv" | cut -f1)

# torch: its C++ tests, test programs and test libraries, headers and CMake files (for building
# and testing C++ extensions) and protoc. torch_shm_manager stays: `import torch` looks for it.
torch=$site/torch
if [ -d "$torch" ]; then
  rm -rf "$torch/test" "$torch/include" "$torch/share/cmake"
  find "$torch/bin" -maxdepth 1 -type f \( -name 'test_*' -o -name '*Test' -o -name 'protoc*' \
    -o -name '*.pt' -o -name '*.ptl' \) -delete
  rm -f "$torch"/lib/lib*test*.so "$torch/lib/libaoti_custom_ops.so" \
    "$torch/lib/libbackend_with_compiler.so"
fi

# onnxruntime: its offline tools (model conversion, quantization, transformer optimisation and
# their sample data); `import onnxruntime` and InferenceSession use none of them.
ort=$site/onnxruntime
if [ -d "$ort" ]; then
  rm -rf "$ort/transformers" "$ort/tools" "$ort/quantization" "$ort/datasets"
fi

# Static libraries link C extensions at build time only.
find "$site" -type f -name '*.a' -delete

# Symbol tables and debug sections of shared libraries: the dynamic symbols that loading needs
# stay. Libraries that auditwheel vendored (*.libs/, rewritten by patchelf) are left as shipped.
# --keep-symbols skips this (the cuda image: its device libraries are tested as shipped).
if [ -n "$strip_symbols" ]; then
  find "$site" -type f \( -name '*.so' -o -name '*.so.*' \) -not -path '*.libs/*' \
    -exec strip --strip-unneeded {} +
fi

after=$(du -sk "$venv" | cut -f1)
echo "trim-venv: $venv $((before / 1024)) MiB -> $((after / 1024)) MiB"
