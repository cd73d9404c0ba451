#!/usr/bin/env bash
# Sets up, builds the xmoe CLI and runs the main job (for now: the router demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target xmoe_cli
./build/xmoe demo "$@"
