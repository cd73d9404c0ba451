#!/usr/bin/env bash
# One run, one machine, one environment: masked-LM TRAINING tokens/s of xmoe's encoder
# (`xmoe bench train`) against the same model in Python PyTorch (bench/train_peer.py), both at
# 1 and 2 intra-op threads, on the same synthetic batches; then a table and the ratio
# xmoe-best / PyTorch-best. The peer runs twice per cell: as plain encoder code (the last layer
# everywhere) and with --prune-last-layer (the last layer after attention only at the labelled
# positions, as xmoe's mlm() does); the table gives the ratio to each. Usage:
#   bench/compare_train.sh [--steps 4] [--warmup 1] [--repeats 1] [--routers config]
#                          [--nproc] [--no-setup] [CONFIG.json | small ...]
# Without configs: every configs/tiny-*.json. "small" = configs/small-xmoe-softmax.json.
# Configs whose router the peer does not implement (noisy_topk) get xmoe numbers only.
# --routers: "config" = the config's own router, "dense" = the same model without MoE layers
# (every FFN dense), any other name = --set moe.router=NAME.
# --repeats R runs every cell R times (interleaved) and shows the best and the spread.
# --nproc adds cells "2x1": two processes of one thread each, data parallel (every rank holds
# the whole model: `xmoe bench train --nproc 2 --experts replicated`, `train_peer.py --nproc 2`),
# and for xmoe "2x1ep": the experts split over the two (`--experts split`).
# XMOE_BUILD_DIR (default build) is the CMake build directory to use.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every row runs with the heap setting xmoe applies to itself (include/xmoe/util/heap.h): large
# freed blocks stay mapped, so no implementation pays page faults for buffers it re-allocates.
export GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776
steps=4 warmup=1 repeats=1 routers=config setup=1 nproc=0
configs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --routers) routers=$2; shift 2 ;;
    --no-setup) setup=0; shift ;;
    --nproc) nproc=1; shift ;;
    -*) echo "compare_train.sh: unknown argument $1" >&2; exit 2 ;;
    *) configs+=("$1"); shift ;;
  esac
done
[ ${#configs[@]} -gt 0 ] || configs=(configs/tiny-*.json)
build=${XMOE_BUILD_DIR:-build}
py=/usr/bin/python3
if [ "$setup" = 1 ]; then
  bash scripts/setup.sh --bench >/dev/null
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build" --target xmoe_cli >/dev/null
fi
"$py" -c "import torch" || { echo "compare_train.sh: $py cannot import torch (scripts/setup.sh --bench)" >&2; exit 1; }
blas=$(readlink -f /usr/lib/x86_64-linux-gnu/libopenblas.so.0 || true)
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "libopenblas.so.0 -> $blas" >&2
case "$blas" in
  *openblas-openmp*) ;;
  *) echo "WARNING: libopenblas.so.0 is not the OpenMP build; xmoe trains ~10x slower (scripts/setup.sh)" >&2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
out=$tmp/results.jsonl
n=0
for cfg in "${configs[@]}"; do
  [ "$cfg" = small ] && cfg=configs/small-xmoe-softmax.json
  label=$(basename "$cfg" .json)
  for router in $routers; do
    sets=()
    case "$router" in
      config) ;;
      dense) sets=(--set moe=null --set 'model.moe_layers=[]') ;;
      *) sets=(--set "moe.router=$router") ;;
    esac
    n=$((n + 1))
    resolved=$tmp/config$n.json
    if ! "./$build/xmoe" bench train --config "$cfg" "${sets[@]}" --print-config >"$resolved" 2>"$tmp/err"; then
      echo "skipped: $label with router '$router': $(cat "$tmp/err")" >&2
      continue
    fi
    name=$label
    [ "$router" = config ] || name="$label+$router"
    echo "$name $resolved" >>"$tmp/configs"
    common=(--steps "$steps" --warmup "$warmup")
    peer=1
    for r in $(seq "$repeats"); do
      for t in 1 2; do
        OMP_NUM_THREADS=$t "./$build/xmoe" --threads "$t" bench train --config "$resolved" "${common[@]}" \
          | sed "s|^|$name |" >>"$out"
        for variant in "" --prune-last-layer; do
          [ "$peer" = 1 ] || continue
          if OMP_NUM_THREADS=$t "$py" bench/train_peer.py --config "$resolved" "${common[@]}" --threads "$t" \
               $variant >"$tmp/line" 2>"$tmp/err"; then
            sed "s|^|$name |" "$tmp/line" >>"$out"
          else
            echo "no PyTorch peer for $name: $(tail -1 "$tmp/err")" >&2
            peer=0
          fi
        done
      done
      [ "$nproc" = 1 ] || continue
      for experts in replicated split; do
        OMP_NUM_THREADS=1 "./$build/xmoe" --threads 2 bench train --config "$resolved" "${common[@]}" \
          --nproc 2 --experts "$experts" | sed "s|^|$name |" >>"$out"
      done
      for variant in "" --prune-last-layer; do
        [ "$peer" = 1 ] || continue
        OMP_NUM_THREADS=1 "$py" bench/train_peer.py --config "$resolved" "${common[@]}" --threads 1 \
          --nproc 2 $variant 2>"$tmp/err" | sed "s|^|$name |" >>"$out" ||
          echo "PyTorch peer --nproc 2 failed for $name: $(tail -1 "$tmp/err")" >&2
      done
    done
    echo "done: $name" >&2
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$py" - "$out" "$tmp/configs" <<'PY'
import collections, json, sys

def train_gflop(c, tokens, pruned):
    """Matrix-multiply GFLOP of one training step (forward + backward = 3 x forward); pruned:
    the last layer after its attention at the labelled positions only."""
    d, L, m, moe = c["model"]["d_model"], c["data"]["max_len"], c["model"], c["moe"]
    p = c["data"]["mask_prob"] + (1 - c["data"]["mask_prob"]) / L   # labelled share (1st forced)
    per_token = 0.0
    for i in range(m["n_layers"]):
        share = p if pruned and i == m["n_layers"] - 1 else 1.0    # rows after the attention
        is_moe = moe and i in m["moe_layers"]
        per_token += 6 * d * d + 4 * L * d                     # qkv, scores + context
        per_token += 2 * d * d * (1.0 if is_moe else share)    # out (full: the router needs it)
        if is_moe:
            route = (2 * d * moe["d_e"] + 2 * moe["d_e"] * moe["n_expert"]
                     if moe["router"].startswith("xmoe") and moe["dim_reduction"] else 2 * d * moe["n_expert"])
            per_token += 4 * d * moe["d_ff"] * moe["top_k"] * share + route
        else:
            per_token += 4 * d * m["d_ff"] * share
    per_token += p * (2 * d * d + 2 * d * 8000)
    return 3 * per_token * tokens / 1e9

configs = dict(line.split() for line in open(sys.argv[2]))
cells = collections.defaultdict(list)          # (name, impl, layout) -> [records]
order, info = [], {}
for line in open(sys.argv[1]):
    name, payload = line.split(" ", 1)
    r = json.loads(payload)
    if name not in order:
        order.append(name)
    impl = r["impl"] if r["impl"] == "xmoe" or r["last_layer"] == "full" else "pytorch-pruned"
    ranks = r.get("ranks", 1)                  # layout: threads, or ranks x threads each
    layout = "%dx%d" % (ranks, r["threads"]) if ranks > 1 else "%d" % r["threads"]
    if r.get("experts") == "split":
        layout += "ep"
    cells[(name, impl, layout)].append(r)
    info.setdefault(name, {}).setdefault(impl, r)

def cell(recs):
    if not recs:
        return "-"
    v = sorted(x["tokens_per_s"] for x in recs)
    return "%.0f" % v[-1] if len(v) == 1 else "%.0f (%.0f-%.0f)" % (v[-1], v[0], v[-1])

impls = ("xmoe", "pytorch", "pytorch-pruned")
layouts = ["1", "2"] + sorted({k[2] for k in cells} - {"1", "2"})
cols = [(impl, t) for impl in impls for t in layouts]
print("masked-LM training tokens/s (median step; best of repeats, range in brackets)")
print("%-22s%7s%9s" % ("config", "tokens", "params") +
      "".join("%21s" % ("%s [%s]" % c) for c in cols) + "%9s%10s%10s" % ("xmoe/py", "/pruned", "GFLOP/s"))
for name in order:
    x = info[name]["xmoe"]
    best = {impl: max((r["tokens_per_s"] for (n, i, t), rs in cells.items() if n == name and i == impl
                       for r in rs), default=float("nan")) for impl in impls}
    ratio = lambda impl: "%.2f" % (best["xmoe"] / best[impl]) if impl in info[name] else "-"
    pruned = x.get("last_layer", "full") != "full"
    print("%-22s%7d%8.2fM" % (name, x["tokens"], x["params"] / 1e6) +
          "".join("%21s" % cell(cells[(name,) + c]) for c in cols) +
          "%9s%10s" % (ratio("pytorch"), ratio("pytorch-pruned")) +
          "%10.1f" % (train_gflop(json.load(open(configs[name])), x["tokens"], pruned) * best["xmoe"] / x["tokens"]))
    for impl in impls[1:]:
        p = info[name].get(impl)
        if p and (p["batch_checksum"] != x["batch_checksum"] or p["params"] != x["params"]):
            print("  WARNING %s %s: batches or parameter counts differ (checksum %s vs %s, params %d vs %d)"
                  % (name, impl, x["batch_checksum"], p["batch_checksum"], x["params"], p["params"]))
print("[N] = N threads, [RxT] = R processes of T threads, data parallel; [RxTep]: experts split")
print("xmoe/py = best xmoe tokens/s over best PyTorch tokens/s (any cell); target >= 2.")
print("  pytorch: the peer as plain encoder code (last layer at every position); pytorch-pruned and")
print("  /pruned: the peer with the last layer after attention at the labelled positions only, as xmoe")
print("GFLOP/s = matrix-multiply work xmoe does per step (fwd + bwd) per second, best xmoe cell")
PY
