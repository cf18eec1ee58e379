#!/usr/bin/env bash
# Builds a stripped `grain` release binary with the `cuda` feature, on a machine that has no GPU and
# no system CUDA toolkit, for shipping to the GPU test machine (see docs/gpu.md).
#
# The CUDA 13.0 build toolkit (nvcc, headers, cuBLAS, cuRAND, NVRTC) comes from NVIDIA's PyPI
# wheels; the driver library (libcuda) is replaced at link time by a stub that only carries the
# symbol names cudarc links against. On the GPU machine the real driver and the CUDA libraries of its
# PyTorch install are used (scripts/gpu-check.sh sets LD_LIBRARY_PATH).
#
# Usage: scripts/build-cuda.sh
# Environment:
#   GRAIN_CUDA_TOOLKIT  where the toolkit goes      (default: $HOME/.cache/grain-cuda13)
#   CARGO_TARGET_DIR    cargo's target dir          (default: <repo>/target-cuda)
#   CUDA_COMPUTE_CAP    the GPU's compute capability (default: 90, H100/H200)
#   GRAIN_CUDA_MAX_MIB  the size limit for the stripped binary (default: 60)
# Prints the binary's path last. nvcc is pinned to 13.0.x: PTX from a newer nvcc can need a newer
# driver than the GPU machine's (580, CUDA 13.0).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PREFIX=${GRAIN_CUDA_TOOLKIT:-$HOME/.cache/grain-cuda13}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
MAX_MIB=${GRAIN_CUDA_MAX_MIB:-60}

# Installs the toolkit into $PREFIX (once) and prints its root, $PREFIX/nvidia/cu13.
install_toolkit() {
  local cu=$PREFIX/nvidia/cu13
  if [[ -x $cu/bin/nvcc && -f $cu/lib/stubs/libcuda.so ]]; then
    echo "$cu"
    return
  fi
  python3 -m pip install --quiet --no-deps --target "$PREFIX" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
    nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88 >&2
  # The wheels ship only versioned sonames (libcublas.so.13); the linker wants libcublas.so.
  local lib
  for lib in "$cu"/lib/lib*.so.[0-9]*; do
    local plain=${lib%%.so.*}.so
    [[ -e $plain ]] || ln -s "$(basename "$lib")" "$plain"
  done
  # The driver stub: one empty function per `cu*` entry point that cudarc declares.
  local sys
  sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -1)
  if [[ -z $sys ]]; then
    echo "build-cuda: cudarc 0.19 sources not in the cargo registry (cargo fetch failed?)" >&2
    exit 1
  fi
  mkdir -p "$cu/lib/stubs"
  grep -ho 'pub unsafe fn cu[A-Za-z0-9_]*' "$sys"/*.rs | awk '{print "void " $4 "(void) {}"}' |
    sort -u >"$cu/lib/stubs/libcuda.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$cu/lib/stubs/libcuda.c"
  ln -sf libcuda.so "$cu/lib/stubs/libcuda.so.1"
  echo "$cu"
}

nice -n 19 cargo fetch >&2
CU=$(install_toolkit)
nvcc_version=$("$CU/bin/nvcc" --version | grep -o 'release [0-9.]*' || true)
if [[ $nvcc_version != "release 13.0" ]]; then
  echo "build-cuda: expected nvcc release 13.0, found '$nvcc_version'" >&2
  exit 1
fi

start=$(date +%s)
PATH=$CU/bin:$PATH CUDA_HOME=$CU CUDA_PATH=$CU \
  LIBRARY_PATH=$CU/lib:$CU/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH} \
  CARGO_PROFILE_RELEASE_STRIP=symbols \
  nice -n 19 cargo build --release -p grain --features cuda >&2
echo "build-cuda: cargo build took $(($(date +%s) - start)) s" >&2

BIN=$CARGO_TARGET_DIR/release/grain
bytes=$(stat -c %s "$BIN")
mib=$((bytes / 1048576))
echo "build-cuda: $BIN is $bytes bytes (${mib} MiB, limit ${MAX_MIB} MiB)" >&2
if ((bytes > MAX_MIB * 1048576)); then
  echo "build-cuda: the stripped binary is over ${MAX_MIB} MiB" >&2
  exit 1
fi
echo "$BIN"
