#!/usr/bin/env bash
# One run, one machine, one environment: forward + backward of one MoE layer for
#   xmoe (fast path), xmoe (reference path), the Python PyTorch peers (bench/peers.py) at their
#   best thread count, and the bare GEMM limit (same expert GEMMs as plain sgemm calls),
# then a table with the ratios. Usage:
#   bench/compare.sh [--tokens 8192] [--d-model 512] [--d-ff 2048] [--iters 3] [--repeats 1]
#                    [--configs "1:8 2:8 1:64 2:64 1:128"]   (top_k:experts pairs) [--no-setup]
# --repeats R runs the whole sweep R times, one after another, and keeps each implementation's
# best cell: every row gets the same number of tries, so a disturbed run costs no one the table.
# --no-setup skips scripts/setup.sh --bench and the build (both already done).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every row runs with the heap setting xmoe applies to itself (include/xmoe/util/heap.h): large
# freed blocks stay mapped, so no implementation pays page faults for buffers it re-allocates.
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776
tokens=8192 d_model=512 d_ff=2048 iters=3 repeats=1 configs="1:8 2:8 1:64 2:64 1:128" setup=1
while [ $# -gt 0 ]; do
  case "$1" in
    --tokens) tokens=$2; shift 2 ;;
    --d-model) d_model=$2; shift 2 ;;
    --d-ff) d_ff=$2; shift 2 ;;
    --iters) iters=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --configs) configs=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ "$setup" = 1 ]; then
  bash scripts/setup.sh --bench >/dev/null
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build --target xmoe_cli >/dev/null
fi
threads=$(nproc)
out=$(mktemp)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}" >&2
echo "libblas.so.3 -> $(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3)" >&2
for ((rep = 1; rep <= repeats; rep++)); do
  for cfg in $configs; do
    k=${cfg%%:*} e=${cfg##*:}
    common="--tokens $tokens --d-model $d_model --d-ff $d_ff --experts $e --top-k $k --iters $iters"
    for t in 1 "$threads"; do
      ./build/xmoe --threads "$t" bench layer $common --path fast | sed 's/^/xmoe_fast /' >>"$out"
      ./build/xmoe --threads "$t" bench layer $common --path reference | sed 's/^/xmoe_reference /' >>"$out"
      /usr/bin/python3 bench/peers.py $common --threads "$t" | sed 's/^/python /' >>"$out"
    done
    echo "done: top_k=$k experts=$e (repeat $rep of $repeats)" >&2
  done
done
/usr/bin/python3 - "$out" <<'PY'
import collections, json, sys
rows = collections.defaultdict(dict)   # (k, e) -> name -> best record
tries = collections.defaultdict(list)  # (k, e, name, threads) -> tokens/s of every repeat
for line in open(sys.argv[1]):
    kind, payload = line.split(" ", 1)
    r = json.loads(payload)
    name = r["peer"] if kind == "python" else kind
    key = (r["top_k"], r["experts"])
    tries[key + (name, r["threads"])].append(r["tokens_per_s"])
    best = rows[key].get(name)
    if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
        rows[key][name] = r
    if kind == "xmoe_fast":
        limit = rows[key].get("gemm_limit")
        if limit is None or r["gemm_limit_tokens_per_s"] > limit["tokens_per_s"]:
            rows[key]["gemm_limit"] = {"tokens_per_s": r["gemm_limit_tokens_per_s"], "threads": r["threads"]}
names = ["gemm_limit", "xmoe_fast", "xmoe_reference", "stacked", "loop", "fairseq"]
print("tokens/s, forward+backward, best thread count in brackets")
print("%-8s" % "k:E" + "".join("%18s" % n for n in names))
for key in sorted(rows):
    cells = []
    for n in names:
        r = rows[key].get(n)
        cells.append("%18s" % ("-" if r is None else "%.0f [%d]" % (r["tokens_per_s"], r["threads"])))
    print("%-8s" % ("%d:%d" % key) + "".join(cells))
print()
print("%-8s%16s%16s%16s%16s%16s" % ("k:E", "fast/limit", "fast/best_py", "fast/fairseq", "fast/ref", "routing_share"))
for key in sorted(rows):
    r = rows[key]
    fast = r["xmoe_fast"]["tokens_per_s"]
    best_py = max(r[n]["tokens_per_s"] for n in ("stacked", "loop", "fairseq") if n in r)
    print("%-8s%16.2f%16.2f%16.2f%16.2f%16.3f" % ("%d:%d" % key, fast / r["gemm_limit"]["tokens_per_s"],
          fast / best_py, fast / r["fairseq"]["tokens_per_s"], fast / r["xmoe_reference"]["tokens_per_s"],
          r["xmoe_fast"]["routing_share"]))
if max(len(v) for v in tries.values()) > 1:
    print()
    print("range over repeats, at each cell's best thread count (tokens/s)")
    print("%-8s" % "k:E" + "".join("%18s" % n for n in names))
    for key in sorted(rows):
        cells = []
        for n in names[1:]:
            r = rows[key].get(n)
            v = tries.get(key + (n, r["threads"])) if r else None
            cells.append("%18s" % ("-" if not v else "%.0f-%.0f" % (min(v), max(v))))
        print("%-8s" % ("%d:%d" % key) + "%18s" % "" + "".join(cells))
PY
rm -f "$out"
