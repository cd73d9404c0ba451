#!/usr/bin/env bash
# The main job: set up, build the xmoe CLI, build a multilingual corpus from Debian packages,
# train the SentencePiece tokenizer, pre-train a tiny SMoE and a tiny X-MoE encoder, evaluate
# both on the test split, fine-tune both on English help topics and test them zero-shot on the
# other languages, print a comparison table and write the analysis report.
# Re-running reuses what is already there (corpus, tokenizer, finished runs).
#   XMOE_DEMO_STEPS=N   training steps per model (default 150, half the configs' 300, to keep
#                       the whole job within 15 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target xmoe_cli
xmoe=./build/xmoe

corpus=data/demo/corpus
tokenizer=data/demo/spm8k
runs=runs/demo
steps=${XMOE_DEMO_STEPS:-150}
start=$SECONDS
step() { echo; echo "== [$(( SECONDS - start ))s] $*"; }

step "corpus: LibreOffice help and fortunes, 12 languages -> $corpus"
# --keys: the paragraph keys label the help-topic task of the fine-tuning step (a corpus of an
# older demo, built without them, is rebuilt; the text comes out the same).
if [ ! -f "$corpus/manifest.json" ] || [ ! -f "$corpus/test/en.keys" ]; then
  $xmoe corpus build --out "$corpus" --cache data/debs --sources libreoffice,fortunes \
    --languages en,de,fr,es,it,ru,pt,nl,pl,ja,zh,cs \
    --max-paragraphs-per-language 20000 --keys --quiet
fi

step "tokenizer: SentencePiece unigram, 8000 pieces -> $tokenizer.model"
if [ ! -f "$tokenizer.model" ]; then
  $xmoe tokenizer train --corpus "$corpus" --out "$tokenizer" --vocab-size 8000 \
    --lines-per-language 2000 >/dev/null
fi

for name in tiny-smoe-softmax tiny-xmoe-softmax; do
  step "pre-training $name -> $runs/$name"
  resume=()
  if ls "$runs/$name/checkpoints/"step-*.safetensors >/dev/null 2>&1; then resume=(--resume); fi
  $xmoe pretrain --config "configs/$name.json" --out "$runs/$name" "${resume[@]}" \
    --set "data.corpus=$corpus" "data.tokenizer=$tokenizer.model" "train.steps=$steps" \
          "train.warmup_steps=$(( steps / 10 ))" "eval.every=$(( (steps + 2) / 3 ))" \
          "checkpoint.every=$(( (steps + 2) / 3 ))"
  $xmoe eval --checkpoint "$runs/$name" --split test --json > "$runs/$name/eval-test.json"
done

for name in tiny-smoe-softmax tiny-xmoe-softmax; do
  step "fine-tuning $name on English help topics, frozen routing -> $runs/finetune/$name"
  if [ ! -f "$runs/finetune/$name/results.json" ]; then
    rm -rf "$runs/finetune/$name"  # an interrupted earlier attempt
    $xmoe finetune --checkpoint "$runs/$name" --out "$runs/finetune/$name" --steps 300 \
      --eval-every 150 --quiet >/dev/null  # the comparison below shows the scores
  fi
done

step "comparison"
python3 scripts/compare_runs.py "$runs/tiny-smoe-softmax" "$runs/tiny-xmoe-softmax" \
  --finetune "$runs/finetune/tiny-smoe-softmax" "$runs/finetune/tiny-xmoe-softmax"

step "report"
$xmoe report "$runs/tiny-smoe-softmax" "$runs/tiny-xmoe-softmax" --out "$runs/report"
echo
echo "runs:   $runs/tiny-smoe-softmax  $runs/tiny-xmoe-softmax"
echo "fine-tuned: $runs/finetune/tiny-smoe-softmax  $runs/finetune/tiny-xmoe-softmax"
echo "report: $runs/report/index.html"
echo "done in $(( SECONDS - start ))s after the build"
