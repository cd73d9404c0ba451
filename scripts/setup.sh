#!/usr/bin/env bash
# Installs every Debian package xmoe needs to build, test and run.
# Idempotent: when everything is present it only checks and returns (no apt-get update).
#   scripts/setup.sh            core build + test dependencies
#   scripts/setup.sh --bench    also the peers used by the benchmarks (Python PyTorch)
set -euo pipefail

core_packages=(
  build-essential cmake ninja-build pkg-config
  libtorch-dev libopenblas-dev libopenblas0-openmp libdnnl-dev
  libgtest-dev libgmock-dev libbenchmark-dev libgloo-dev
  nlohmann-json3-dev libcli11-dev libsentencepiece-dev
  python3 groff-base python3-matplotlib python3-sklearn
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
# libblas.so.3 and liblapack.so.3 of the OpenMP build load libopenblas.so.0, itself an
# alternative that installing numpy/scipy may point at the pthread build: set all three.
for alt in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
  target="$arch_dir/openblas-openmp/$alt"
  [ -e "$target" ] || continue
  if [ "$(readlink -f "$arch_dir/$alt" || true)" != "$(readlink -f "$target")" ]; then
    "${sudo_cmd[@]}" update-alternatives --set "$alt-x86_64-linux-gnu" "$target" >/dev/null
  fi
done
echo "setup.sh: all packages present"
