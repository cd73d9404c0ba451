#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds and runs the whole test suite with ctest.
#   --sanitize   instead: build into build-asan with AddressSanitizer (leaks included),
#                UndefinedBehaviorSanitizer and float-to-int overflow checks, and run the suite
#                there (~13 min to build, ~6 min to test on 2 cores; CONTRIBUTING.md)
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
configure=(-DCMAKE_BUILD_TYPE=Release)
case "${1:-}" in
  "") ;;
  --sanitize)
    build=build-asan
    configure=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DXMOE_BUILD_BENCH=OFF
               -DXMOE_SANITIZE=address,undefined,float-cast-overflow)
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1} ;;
  *) echo "usage: scripts/test.sh [--sanitize]" >&2; exit 2 ;;
esac
bash scripts/setup.sh
cmake -S . -B "$build" -G Ninja "${configure[@]}" >/dev/null
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
