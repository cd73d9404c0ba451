#!/usr/bin/env python3
"""Prints the main job's comparison tables: test perplexity per language for every run (from
`xmoe eval --json` output saved as <run>/eval-test.json), the expert load balance of the
last validation in <run>/metrics.jsonl (docs/run-directory.md), and, for fine-tuned models
(`xmoe finetune` output directories), help-topic test accuracy per language and how much of the
routing fine-tuning moved (docs/finetuning.md).

Usage: compare_runs.py RUN_DIR [RUN_DIR ...] [--finetune FINETUNE_DIR ...]
"""
import argparse
import json
import math
import os
import sys


def last_valid(run):
    """The last "valid" line of <run>/metrics.jsonl (a pre-training or fine-tuning run)."""
    last = None
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{run}/metrics.jsonl:{number}: malformed line ({e})")
            if record.get("kind") == "valid":
                last = record
    return last


def cell(value, width, digits):
    """A right-aligned table cell; "-" where the value is undefined (JSON null, e.g. a language
    without test tokens, or NaN)."""
    if value is None or not math.isfinite(float(value)):
        return "-".rjust(width)
    return f"{float(value):{width}.{digits}f}"


def mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def print_finetune(dirs):
    rows = []
    for d in dirs:
        with open(os.path.join(d, "results.json"), encoding="utf-8") as f:
            results = json.load(f)
        rows.append((os.path.basename(os.path.normpath(d)), results, last_valid(d) or {}))
    trained = rows[0][1]["train_language"]
    languages = [trained] + sorted({lang for _, r, _ in rows for lang in r["test"]} - {trained})
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"Help-topic classification after fine-tuning on {trained}: test accuracy "
          f"(higher is better; other languages zero-shot)")
    print("run".ljust(width) + "".join(lang.rjust(7) for lang in languages)
          + "  zero-shot" + "  routing moved")
    for name, r, valid in rows:
        cells = "".join(cell(r["test"].get(lang, {}).get("accuracy"), 7, 3) for lang in languages)
        moved = mean(valid.get("routing_changed") or [])
        print(name.ljust(width) + cells + cell(r.get("test_zero_shot_accuracy"), 11, 3)
              + cell(moved, 15, 3))
    print("(routing moved: share of the validation tokens whose top-1 expert is not the "
          "pre-trained model's, mean over MoE layers)")


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--finetune", nargs="+", default=[], metavar="FINETUNE_DIR")
    args = parser.parse_args(argv)
    runs = args.runs
    rows = []
    for run in runs:
        with open(os.path.join(run, "eval-test.json"), encoding="utf-8") as f:
            test = json.load(f)
        with open(os.path.join(run, "config.json"), encoding="utf-8") as f:
            name = json.load(f).get("name", os.path.basename(run))
        rows.append((name, test, last_valid(run) or {}))

    languages = sorted({lang for _, test, _ in rows for lang in test["languages"]})
    width = max(len(name) for name, _, _ in rows) + 2
    print("Test perplexity (masked LM, lower is better)")
    print("run".ljust(width) + "".join(lang.rjust(8) for lang in languages) + "     all")
    for name, test, _ in rows:
        cells = "".join(cell(test["languages"].get(lang, {}).get("ppl"), 8, 1) for lang in languages)
        print(name.ljust(width) + cells + cell(test["ppl"], 8, 1))
    print()
    print("Expert load balance at the last validation (probe tokens; mean over MoE layers)")
    print("run".ljust(width) + "load CV".rjust(10) + "max/mean".rjust(10) + "entropy".rjust(10)
          + "RC router".rjust(11) + "RC hidden".rjust(11))
    for name, _, valid in rows:
        layers = valid.get("moe", [])
        if not layers:
            print(name.ljust(width) + "   (dense: no MoE layer)")
            continue
        stat = lambda key: mean([layer.get(key) for layer in layers])
        print(name.ljust(width) + cell(stat("load_cv"), 10, 3) + cell(stat("load_max_over_mean"), 10, 3)
              + cell(stat("load_entropy"), 10, 3) + cell(stat("rc_router"), 11, 3)
              + cell(stat("rc_hidden"), 11, 3))
    if args.finetune:
        print()
        print_finetune(args.finetune)


if __name__ == "__main__":
    main(sys.argv[1:])
