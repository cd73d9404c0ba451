#!/usr/bin/env bash
# Installs every Debian package xmoe needs to build, test and run.
# Idempotent: when everything is present it only checks and returns (no apt-get update).
#   scripts/setup.sh            core build + test dependencies
#   scripts/setup.sh --bench    also the peers used by the benchmarks (Python PyTorch)
set -euo pipefail

core_packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas-dev libopenblas0-openmp libdnnl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libcli11-dev libsentencepiece-dev
  python3 groff-base
)
bench_packages=(python3-torch)

packages=("${core_packages[@]}")
for arg in "$@"; do
  case "$arg" in
    --bench) packages+=("${bench_packages[@]}") ;;
    *) echo "setup.sh: unknown argument '$arg' (known: --bench)" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# LibTorch reaches BLAS through the libblas.so.3 alternative. The pthread OpenBLAS
# oversubscribes the cores together with torch's OpenMP pool; the OpenMP build follows
# at::set_num_threads (measured torch mm: 476 vs 376 GFLOP/s on 2 cores).
arch_dir=/usr/lib/x86_64-linux-gnu
openmp_blas="$arch_dir/openblas-openmp/libblas.so.3"
if [ -e "$openmp_blas" ]; then
  current=$(readlink -f "$arch_dir/libblas.so.3" || true)
  if [ "$current" != "$(readlink -f "$openmp_blas")" ]; then
    "${sudo_cmd[@]}" update-alternatives --set "libblas.so.3-x86_64-linux-gnu" "$openmp_blas" >/dev/null
    "${sudo_cmd[@]}" update-alternatives --set "liblapack.so.3-x86_64-linux-gnu" \
      "$arch_dir/openblas-openmp/liblapack.so.3" >/dev/null
  fi
fi
echo "setup.sh: all packages present"
