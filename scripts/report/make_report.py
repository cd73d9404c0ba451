#!/usr/bin/env python3
"""Training and routing report for xmoe runs: figures (PNG + SVG) and a self-contained index.html.

Usage: make_report.py --out DIR [--analysis ANALYSIS_DIR] [--tsne-points N] RUN_DIR [RUN_DIR ...]

Reads each RUN_DIR/metrics.jsonl (and RUN_DIR/config.json for the run's "name"), and when given
ANALYSIS_DIR/analysis.json and ANALYSIS_DIR/token_map-<run>-layer<L>.safetensors, all in the
formats of docs/run-directory.md. Writes into DIR, each figure as <stem>.png and <stem>.svg:

  train_loss                training objective and MLM loss over steps, one line per run
  valid_ppl                 validation perplexity over steps, one line per run
  language_ppl              per-language validation perplexity at each run's last valid line
  rc_training, rf_training  representation collapse / routing fluctuation per run and MoE layer
                            over training (metrics.jsonl "valid" lines)
  rc_checkpoints,           the same measured at the checkpoints of analysis.json
  rf_checkpoints
  consistency               inter-run consistency per window (analysis.json "consistency")
  load-<run>                expert-load share heatmap per MoE layer (x = step, y = expert)
  token_map-<run>-layer<L>  probe tokens in 2-D (PCA, t-SNE) coloured by top-1 expert (and
                            by language when the file has it)

and index.html, which links only files beside it and names every figure it had to skip (dense run,
no analysis, missing values). docs/analysis.md explains how to read each figure.

Exit status 0 on success, 2 on bad arguments or input (missing run directory, malformed metrics
line: the message names file and line). Needs numpy and matplotlib (Debian python3-numpy,
python3-matplotlib); t-SNE needs scikit-learn (python3-sklearn) and is left out, with a note on
the page, when it is missing. When the python3 running this script lacks numpy or matplotlib and
/usr/bin/python3 is a different interpreter, the script re-runs itself under /usr/bin/python3.
"""

import argparse
import dataclasses
import html
import importlib.util
import json
import math
import os
import re
import struct
import sys

try:
    import numpy as np
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _IMPORT_ERROR = None
except ImportError as exc:  # handled in main(): re-run under the system python or exit 2
    np = plt = None
    _IMPORT_ERROR = exc

SYSTEM_PYTHON = "/usr/bin/python3"
REEXEC_GUARD = "XMOE_REPORT_REEXEC"
DEFAULT_TSNE_POINTS = 2000
TSNE_MIN_POINTS = 10
RANDOM_STATE = 0
MISSING = "–"


class ReportError(Exception):
    """Bad input: printed as one line, exit status 2."""


# ---------------------------------------------------------------------------- input: runs


@dataclasses.dataclass
class Run:
    name: str
    dir: str
    slug: str
    train: list  # "train" lines, one per step (the latest when a resumed run repeats steps)
    valid: list  # "valid" lines, likewise
    config: dict


def num(value):
    """A JSON value as float: NaN for null, non-numbers and booleans."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_metrics_line(raw, where):
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ReportError(f"{where}: malformed metrics line (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg}, column {exc.colno}"
        raise ReportError(f"{where}: malformed metrics line ({reason})") from None
    if not isinstance(record, dict):
        raise ReportError(f"{where}: malformed metrics line (not a JSON object)")
    if not isinstance(record.get("kind"), str):
        raise ReportError(f'{where}: malformed metrics line (no string "kind")')
    if not finite(num(record.get("step"))):
        raise ReportError(f'{where}: malformed metrics line (no numeric "step")')
    return record


def latest_per_step(records):
    """One record per step, the last written (a resumed run repeats steps), in step order."""
    by_step = {}
    for record in records:
        by_step[num(record["step"])] = record
    return [by_step[step] for step in sorted(by_step)]


def read_metrics(path):
    """(train lines, valid lines) of a metrics.jsonl; other kinds are ignored."""
    lines = {"train": [], "valid": []}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                record = parse_metrics_line(raw, f"{path}:{number}")
                lines.get(record["kind"], []).append(record)
    return latest_per_step(lines["train"]), latest_per_step(lines["valid"])


def read_config(run_dir):
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        return config if isinstance(config, dict) else {}
    except (OSError, ValueError):
        return {}


def slugify(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"


def unique(value, taken):
    candidate, n = value, 2
    while candidate in taken:
        candidate, n = f"{value}-{n}", n + 1
    taken.add(candidate)
    return candidate


def load_runs(run_dirs):
    runs, names, slugs = [], set(), set()
    for run_dir in run_dirs:
        if not os.path.isdir(run_dir):
            raise ReportError(f"{run_dir}: no such run directory")
        metrics = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.isfile(metrics):
            raise ReportError(f"{metrics}: missing (not a run directory?)")
        train, valid = read_metrics(metrics)
        config = read_config(run_dir)
        name = config.get("name")
        if not isinstance(name, str) or not name:
            name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
        name = unique(name, names)
        runs.append(Run(name, run_dir, unique(slugify(name), slugs), train, valid, config))
    return runs


# ------------------------------------------------------------------------ input: analysis


@dataclasses.dataclass
class TokenMap:
    run: str
    layer: int
    path: str


@dataclasses.dataclass
class Analysis:
    dir: str
    data: dict  # analysis.json, or {} when the folder has none
    token_maps: list


TOKEN_MAP_RE = re.compile(r"^token_map-(.+)-layer(\d+)\.safetensors$")


def load_analysis(analysis_dir):
    if analysis_dir is None:
        return None
    if not os.path.isdir(analysis_dir):
        raise ReportError(f"{analysis_dir}: no such analysis directory")
    data = {}
    path = os.path.join(analysis_dir, "analysis.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ReportError(f"{path}: malformed JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ReportError(f"{path}: malformed (not a JSON object)")
    maps = []
    for entry in sorted(os.listdir(analysis_dir)):
        match = TOKEN_MAP_RE.match(entry)
        if match:
            maps.append(TokenMap(match[1], int(match[2]), os.path.join(analysis_dir, entry)))
    return Analysis(analysis_dir, data, maps)


SAFETENSORS_DTYPES = {"F32": "<f4", "F64": "<f8", "I64": "<i8"}


def read_safetensors(path):
    """{name: numpy array} of a safetensors file (dtypes F32, F64, I64; ValueError otherwise)."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: too short for a safetensors header")
    (header_len,) = struct.unpack("<Q", blob[:8])
    if 8 + header_len > len(blob):
        raise ValueError(f"{path}: header length {header_len} runs past the end of the file")
    header = json.loads(blob[8 : 8 + header_len].decode("utf-8"))
    data = memoryview(blob)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
        shape = [int(n) for n in info["shape"]]
        begin, end = (int(n) for n in info["data_offsets"])
        count = math.prod(shape)
        if not 0 <= begin <= end <= len(data) or end - begin != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: tensor {name!r} has bad data_offsets {[begin, end]}")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape)
    return tensors


# ------------------------------------------------------------------------------ selections


def moe_points(records, key):
    """[(step, [per-layer dict])] from "valid" lines (key "moe") or checkpoints ("layers")."""
    points = []
    for record in records:
        layers = record.get(key) if isinstance(record, dict) else None
        if isinstance(layers, list):
            points.append((num(record.get("step")), [l for l in layers if isinstance(l, dict)]))
    return points


def layer_series(points, field):
    """{layer: ([steps], [values])} of the finite values of `field`."""
    series = {}
    for step, layers in points:
        for position, entry in enumerate(layers):
            value = num(entry.get(field))
            if finite(step) and finite(value):
                layer = entry.get("layer", position)
                steps, values = series.setdefault(layer, ([], []))
                steps.append(step)
                values.append(value)
    return series


def scalar_series(records, field, fallback=None):
    """([steps], [values]) of a top-level field; `fallback(record)` fills missing values."""
    steps, values = [], []
    for record in records:
        value = num(record.get(field))
        if not finite(value) and fallback is not None:
            value = fallback(record)
        if finite(value):
            steps.append(num(record["step"]))
            values.append(value)
    return steps, values


def exp_or_nan(value):
    value = num(value)
    return math.exp(value) if finite(value) and value < 700 else math.nan


def valid_ppl(record):
    value = num(record.get("valid_ppl"))
    return value if finite(value) else exp_or_nan(record.get("valid_loss"))


def language_ppl(record):
    """{language: ppl} of one "valid" line."""
    out = {}
    languages = record.get("languages")
    for lang, entry in (languages.items() if isinstance(languages, dict) else []):
        if isinstance(entry, dict):
            value = num(entry.get("ppl"))
            out[lang] = value if finite(value) else exp_or_nan(entry.get("loss"))
    return out


def last_language_ppl(run):
    for record in reversed(run.valid):
        values = language_ppl(record)
        if values:
            return values
    return {}


def mean(values):
    values = [v for v in values if finite(v)]
    return sum(values) / len(values) if values else math.nan


def fmt(value, digits=4):
    return f"{value:.{digits}g}" if finite(value) else MISSING


# -------------------------------------------------------------------------------- figures


@dataclasses.dataclass
class Figure:
    stem: str
    title: str
    caption: str


@dataclasses.dataclass
class Skipped:
    title: str
    reason: str


def save(fig, out_dir, stem):
    fig.savefig(os.path.join(out_dir, stem + ".png"), dpi=110)
    fig.savefig(os.path.join(out_dir, stem + ".svg"), metadata={"Date": None})
    plt.close(fig)


def positive(values):
    return len(values) > 0 and min(values) > 0


def draw_lines(ax, series, ylabel, log_when_positive=False):
    """series: [(label, steps, values)]; log y-axis when asked and every value is positive."""
    every = [v for _, _, values in series for v in values]
    for label, steps, values in series:
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=label)
    if log_when_positive and positive(every):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def line_figure(out_dir, stem, panels, title, caption, log_when_positive=False,
                empty_reason="no finite values to plot"):
    """panels: [(ylabel, series)]; Skipped(empty_reason) when every series is empty."""
    panels = [(label, [s for s in series if s[1]]) for label, series in panels]
    panels = [(label, series) for label, series in panels if series]
    if not panels:
        return Skipped(title, empty_reason)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        draw_lines(ax, series, ylabel, log_when_positive)
    fig.suptitle(title)
    fig.tight_layout()
    save(fig, out_dir, stem)
    return Figure(stem, title, caption)


def fig_train_loss(runs, out_dir):
    panels = [
        (field, [(r.name, *scalar_series(r.train, field)) for r in runs])
        for field in ("loss", "mlm_loss")
    ]
    return line_figure(
        out_dir, "train_loss", panels, "Training loss",
        "Left: the training objective (MLM cross-entropy plus the weighted auxiliary losses), "
        "right: the MLM cross-entropy alone (nats per predicted token), each averaged over the "
        "steps since the previous train line of metrics.jsonl; one line per run.",
        empty_reason='no finite loss in any "train" line')


def fig_valid_ppl(runs, out_dir):
    panels = [("validation perplexity", [(r.name, *scalar_series(r.valid, "valid_ppl", valid_ppl))
                                         for r in runs])]
    return line_figure(
        out_dir, "valid_ppl", panels, "Validation perplexity",
        "exp(MLM cross-entropy) on the validation split, token-weighted over languages, at every "
        "validation step; one line per run (log scale). Lower is better.", log_when_positive=True,
        empty_reason='no finite valid_ppl or valid_loss in any "valid" line')


def fig_language_ppl(runs, out_dir):
    title = "Per-language validation perplexity at the last validation step"
    finals = [(r, last_language_ppl(r)) for r in runs]
    finals = [(r, v) for r, v in finals if any(finite(x) for x in v.values())]
    if not finals:
        return Skipped(title, 'no "languages" values in any valid line')
    languages = sorted({lang for _, values in finals for lang in values})
    width = 0.8 / len(finals)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.9 * len(languages) * max(1, len(finals) / 2)), 4.2))
    for i, (run, values) in enumerate(finals):
        xs = [j + (i - (len(finals) - 1) / 2) * width for j in range(len(languages))]
        ax.bar(xs, [values.get(lang, math.nan) for lang in languages], width, label=run.name)
    ax.set_xticks(range(len(languages)), languages)
    ax.set_ylabel("validation perplexity")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(title)
    fig.tight_layout()
    save(fig, out_dir, "language_ppl")
    return Figure("language_ppl", title,
                  "Grouped bars: for every language, one bar per run with the validation "
                  "perplexity of that language at the run's last validation line. A missing bar: "
                  "the run has no value for that language.")


def per_layer_series(named_points, field):
    """[(f"{run} L{layer}", steps, values)] over runs and their MoE layers."""
    series = []
    for name, points in named_points:
        for layer, (steps, values) in sorted(layer_series(points, field).items(), key=str):
            series.append((f"{name} L{layer}", steps, values))
    return series


def fig_rc(named_points, out_dir, stem, where):
    panels = [(f"RC ({field})", per_layer_series(named_points, field))
              for field in ("rc_router", "rc_hidden")]
    return line_figure(
        out_dir, stem, panels, f"Representation collapse {where}",
        "RC = (1/K)·Tr(Σ_W Σ_B⁺) of the probe tokens grouped by their top-1 expert (SPEC §7; "
        "paper Fig. 2c). Left: measured on the router's input (h, or the projected z of X-MoE), "
        "right: on the hidden states h entering the layer for every router, the like-for-like "
        "comparison. One line per run and MoE layer (L = encoder layer index; dense runs have "
        "none). Smaller = more collapse.", log_when_positive=True,
        empty_reason="no finite RC value of any MoE layer (dense runs only, or all null)")


def fig_rf(named_points, out_dir, stem, where):
    panels = [("RF ratio", per_layer_series(named_points, "rf"))]
    return line_figure(
        out_dir, stem, panels, f"Routing fluctuation {where}",
        "Share of the fixed probe tokens whose top-1 expert changed since the previous "
        "measurement (paper Fig. 3a); one line per run and MoE layer (dense runs have none). "
        "Lower = more stable routing. RF falls with the learning rate and grows with the step "
        "gap, so compare runs at matching steps and schedules.",
        empty_reason="no finite RF value of any MoE layer (dense runs only, a single "
                     "measurement per run, or all null)")


def fig_load_heatmap(run, out_dir):
    title = f"Expert load over training: {run.name}"
    by_layer = {}
    for step, layers in moe_points(run.valid, "moe"):
        for position, entry in enumerate(layers):
            load = entry.get("load")
            if isinstance(load, list) and load and finite(step):
                by_layer.setdefault(entry.get("layer", position), []).append((step, load))
    by_layer = {k: v for k, v in by_layer.items() if len({len(load) for _, load in v}) == 1}
    if not by_layer:
        return Skipped(title, "no MoE layer with a per-expert load (dense run, or no valid line)")
    fig, axes = plt.subplots(len(by_layer), 1, figsize=(7.5, 0.6 + 2.4 * len(by_layer)),
                             squeeze=False)
    for ax, (layer, rows) in zip(axes[:, 0], sorted(by_layer.items(), key=lambda kv: str(kv[0]))):
        share = np.array([[num(x) for x in load] for _, load in rows]).T  # [E, n_steps]
        image = ax.imshow(share, aspect="auto", origin="lower", interpolation="nearest",
                          cmap="viridis", vmin=0.0)
        ticks = np.unique(np.linspace(0, len(rows) - 1, min(len(rows), 8)).round().astype(int))
        ax.set_xticks(ticks, [f"{rows[i][0]:g}" for i in ticks])
        ax.set_xlabel("step")
        ax.set_ylabel(f"L{layer} expert")
        fig.colorbar(image, ax=ax, label="share of slots")
    fig.suptitle(title)
    fig.tight_layout()
    stem = f"load-{run.slug}"
    save(fig, out_dir, stem)
    return Figure(stem, title,
                  "One panel per MoE layer: column = validation step, row = expert, colour = the "
                  "expert's share of the routed slots of the probe tokens (each column sums to 1). "
                  "Even routing is a uniform colour 1/E; a bright row is an overloaded expert, a "
                  "dark one an unused expert.")


def fig_consistency(analysis, out_dir):
    title = "Inter-run consistency per window"
    consistency = analysis.data.get("consistency") if analysis else None
    if not isinstance(consistency, dict):
        return Skipped(title, "analysis.json has no consistency (needs --analysis and ≥ 2 runs)")
    series = []
    for entry in consistency.get("layers") or []:
        if not isinstance(entry, dict):
            continue
        points = [(num(w.get("end_step")), num(w.get("pearson_mean")))
                  for w in entry.get("windows") or [] if isinstance(w, dict)]
        points = [(s, v) for s, v in points if finite(s) and finite(v)]
        if points:
            label = f"L{entry.get('layer', '?')} (mean {fmt(num(entry.get('mean')), 3)})"
            series.append((label, [s for s, _ in points], [v for _, v in points]))
    m = consistency.get("window_steps")
    return line_figure(
        out_dir, "consistency", [("mean Pearson ρ over run pairs", series)], title,
        f"For each window of {m} steps (x = the window's last step), the Pearson correlation of "
        "the expert-load vectors of every pair of runs, averaged over the pairs (paper Fig. 3b); "
        "one line per MoE layer. 1 = the runs route identically, 0 = unrelated.",
        empty_reason="analysis.json consistency has no finite window value")


def subsample(n, limit):
    """Sorted indices of at most `limit` of n points (fixed seed)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.RandomState(RANDOM_STATE).choice(n, limit, replace=False))


def tsne_embedding(x):
    """2-D t-SNE of x [n, r] (scikit-learn, fixed random_state, one OpenMP thread)."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=RANDOM_STATE)
    # One thread: the same map on every machine, and no spin-waiting OpenMP team on a busy box
    # (measured on 2 shared cores, 2000 points: 16 s on one thread, 68 s on two).
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(np.asarray(x, dtype=np.float64))


def category_colors(n):
    """n distinguishable colours: tab10, tab20, then evenly spaced along turbo."""
    if n <= 20:
        cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
        return [cmap(i) for i in range(n)]
    cmap = plt.get_cmap("turbo")
    return [cmap(i / (n - 1)) for i in range(n)]


def scatter_by(ax, xy, labels, names, title):
    values = sorted(set(labels.tolist()))
    for value, color in zip(values, category_colors(len(values))):
        keep = labels == value
        ax.scatter(xy[keep, 0], xy[keep, 1], s=6, color=color, label=names(value), linewidths=0)
    if len(values) <= 16:
        ax.legend(fontsize="x-small", markerscale=2, loc="best")
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def language_namer(runs, run_name):
    """Language index → name from the run's config (data.languages), else "lang i"."""
    config = next((r.config for r in runs if run_name in (r.name, r.slug)), {})
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    names = data.get("languages") or config.get("languages") or []
    return lambda i: names[i] if isinstance(names, list) and 0 <= i < len(names) else f"lang {i}"


def token_map_panels(tensors, tsne_points, use_tsne):
    """[(method, xy)] and the indices of the points drawn (t-SNE left out when it fails)."""
    n = len(tensors["expert"])
    keep = subsample(n, tsne_points if tsne_points > 0 else n)
    panels = []
    if "pca" in tensors and tensors["pca"].shape == (n, 2):
        panels.append(("PCA", np.asarray(tensors["pca"], dtype=np.float64)[keep]))
    router_input = tensors.get("router_input")
    if (use_tsne and tsne_points > 0 and router_input is not None and router_input.ndim == 2
            and len(router_input) == n and len(keep) >= TSNE_MIN_POINTS):
        try:
            panels.append(("t-SNE", tsne_embedding(router_input[keep])))
        except ValueError:  # e.g. non-finite router input
            pass
    return panels, keep


def colour_rows(tensors, keep, runs, run_name):
    """[(what, labels of the drawn points, label → legend text)]: expert, and language if any."""
    expert = tensors["expert"]
    rows = [("top-1 expert", expert[keep], lambda e: f"expert {e}")]
    language = tensors.get("language")
    if language is not None and language.shape == expert.shape and len(np.unique(language)) > 1:
        rows.append(("language", language.astype(np.int64)[keep], language_namer(runs, run_name)))
    return rows


def token_map_caption(n_drawn, n_total, panels, by_language):
    methods = " and ".join(method for method, _ in panels)
    return (f"{n_drawn} of {n_total} probe tokens at the last checkpoint, projected to 2-D by "
            f"{methods} (PCA of the hidden states h entering the layer, computed by xmoe analyze; "
            "t-SNE of the router input, scikit-learn, fixed random_state), coloured by top-1 "
            + ("expert (top) and by language (bottom)" if by_language else "expert")
            + ". Tight single-colour clusters = the tokens of an expert share a region of "
            "representation space (paper Fig. 4).")


def fig_token_map(token_map, runs, out_dir, tsne_points, use_tsne, stems):
    title = f"Token map: {token_map.run}, layer {token_map.layer}"
    try:
        tensors = read_safetensors(token_map.path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return Skipped(title, f"unreadable token map: {exc}")
    expert = tensors.get("expert")
    if expert is None or expert.ndim != 1 or len(expert) < 2:
        return Skipped(title, f'{os.path.basename(token_map.path)} has no "expert" [N] tensor')
    tensors["expert"] = expert.astype(np.int64)
    panels, keep = token_map_panels(tensors, tsne_points, use_tsne)
    if not panels:
        return Skipped(title, 'no "pca" [N, 2] and no t-SNE (no "router_input" or scikit-learn)')
    rows = colour_rows(tensors, keep, runs, token_map.run)
    fig, axes = plt.subplots(len(rows), len(panels), squeeze=False,
                             figsize=(5.2 * len(panels), 4.6 * len(rows)))
    for r, (what, labels, names) in enumerate(rows):
        for c, (method, xy) in enumerate(panels):
            scatter_by(axes[r][c], xy, labels, names, f"{method}, coloured by {what}")
    fig.suptitle(title)
    fig.tight_layout()
    stem = unique(f"token_map-{slugify(token_map.run)}-layer{token_map.layer}", stems)
    save(fig, out_dir, stem)
    return Figure(stem, title, token_map_caption(len(keep), len(expert), panels, len(rows) > 1))


# ------------------------------------------------------------------------------ the page


def summary_table(runs):
    languages = sorted({lang for r in runs for lang in last_language_ppl(r)})
    head = ["run", "directory", "last step", "final valid ppl"] + [f"ppl {l}" for l in languages]
    head += ["mean load CV", "last RC router", "last RC hidden", "mean RF"]
    rows = []
    for run in runs:
        _, ppls = scalar_series(run.valid, "valid_ppl", valid_ppl)
        last_steps = [num(r["step"]) for r in run.train + run.valid]
        lang = last_language_ppl(run)
        points = moe_points(run.valid, "moe")
        row = [run.name, run.dir, fmt(max(last_steps), 8) if last_steps else MISSING,
               fmt(ppls[-1]) if ppls else MISSING]
        row += [fmt(lang.get(l, math.nan)) for l in languages]
        row.append(fmt(mean([v for _, vs in layer_series(points, "load_cv").values() for v in vs])))
        for field in ("rc_router", "rc_hidden"):
            last = [f"L{layer}: {fmt(vs[-1], 3)}"
                    for layer, (_, vs) in sorted(layer_series(points, field).items(), key=str)]
            row.append(", ".join(last) or MISSING)
        row.append(fmt(mean([v for _, vs in layer_series(points, "rf").values() for v in vs])))
        rows.append(row)
    return table(head, rows)


def table(head, rows):
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>\n"
                   for row in rows)
    return f"<table>\n<tr>{cells}</tr>\n{body}</table>\n"


def token_agreement_table(analysis):
    consistency = analysis.data.get("consistency") if analysis else None
    entries = consistency.get("token_agreement") if isinstance(consistency, dict) else None
    rows = [[f"L{e.get('layer', '?')}", " vs ".join(str(r) for r in e.get("runs") or []),
             fmt(num(e.get("agreement")))] for e in entries or [] if isinstance(e, dict)]
    if not rows:
        return ""
    return ("<p>Token agreement: share of the probe tokens that two runs route to the same top-1 "
            "expert.</p>\n" + table(["layer", "runs", "agreement"], rows))


def figure_html(item):
    if isinstance(item, Skipped):
        return (f'<div class="skipped"><strong>{html.escape(item.title)}</strong>: not drawn — '
                f"{html.escape(item.reason)}.</div>\n")
    stem = html.escape(item.stem)
    return (f'<figure id="{stem}"><a href="{stem}.svg"><img src="{stem}.png" '
            f'alt="{html.escape(item.title)}"></a>\n<figcaption><strong>{html.escape(item.title)}'
            f"</strong>. {html.escape(item.caption)} (<a href=\"{stem}.svg\">SVG</a>)"
            "</figcaption></figure>\n")


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:90%}
td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left}th{background:#eee}
figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}
figcaption{font-size:90%;max-width:900px}.skipped{color:#844;margin:.5em 0}
.note{background:#ffd;padding:.5em;border:1px solid #dd9}"""


def write_page(out_dir, runs, sections, notes):
    parts = ["<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
             "<title>xmoe report</title>", f"<style>{STYLE}</style></head><body>",
             "<h1>xmoe report</h1>",
             f"<p>{len(runs)} run(s): {html.escape(', '.join(r.name for r in runs))}.</p>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts += ["<h2>Summary</h2>", summary_table(runs),
              "<p>Final valid ppl and per-language ppl: the last validation line. Mean load CV and "
              "mean RF: over every validation line and MoE layer. Last RC: each MoE layer's value "
              f"at the last validation line (L = encoder layer). {MISSING} = no value.</p>"]
    for heading, items, extra in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts += [figure_html(item) for item in items]
        parts.append(extra)
    parts.append("</body></html>\n")
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


# ---------------------------------------------------------------------------------- main


def tsne_available():
    return all(importlib.util.find_spec(name) for name in ("sklearn", "threadpoolctl"))


def build_sections(runs, analysis, out_dir, tsne_points, use_tsne):
    named = [(r.name, moe_points(r.valid, "moe")) for r in runs]
    sections = [
        ("Training", [fig_train_loss(runs, out_dir)], ""),
        ("Validation", [fig_valid_ppl(runs, out_dir), fig_language_ppl(runs, out_dir)], ""),
        ("Routing over training (metrics.jsonl)",
         [fig_rc(named, out_dir, "rc_training", "over training"),
          fig_rf(named, out_dir, "rf_training", "over training")]
         + [fig_load_heatmap(r, out_dir) for r in runs], ""),
    ]
    if analysis is None:
        reason = "no analysis directory given (--analysis DIR, written by xmoe analyze)"
        skipped = Skipped("Checkpoint analysis, consistency and token maps", reason)
        return sections + [("Checkpoint analysis", [skipped], "")]
    checkpoints = [(str(r.get("name", "?")), moe_points(r.get("checkpoints") or [], "layers"))
                   for r in analysis.data.get("runs") or [] if isinstance(r, dict)]
    items = [fig_rc(checkpoints, out_dir, "rc_checkpoints", "at the checkpoints"),
             fig_rf(checkpoints, out_dir, "rf_checkpoints", "between checkpoints"),
             fig_consistency(analysis, out_dir)]
    stems = set()
    maps = [fig_token_map(m, runs, out_dir, tsne_points, use_tsne, stems)
            for m in analysis.token_maps]
    if not maps:
        maps = [Skipped("Token maps", f"no token_map-*.safetensors in {analysis.dir}")]
    sections.append(("Checkpoint analysis (analysis.json)", items, token_agreement_table(analysis)))
    sections.append(("Token maps", maps, ""))
    return sections


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Figures and an HTML page for xmoe runs (docs/analysis.md).")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--analysis", help="folder written by xmoe analyze (analysis.json, "
                                           "token_map-*.safetensors)")
    parser.add_argument("--tsne-points", type=int, default=DEFAULT_TSNE_POINTS,
                        help="most tokens per token map (default %(default)s; 0: no t-SNE)")
    parser.add_argument("--quiet", action="store_true",
                        help="do not print the path of index.html (xmoe report prints where it "
                             "moved the report)")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories")
    args = parser.parse_args(argv)
    if args.tsne_points < 0:
        parser.error(f"--tsne-points must be >= 0, got {args.tsne_points}")
    return args


def reexec_or_exit(argv):
    """numpy/matplotlib missing: re-run under the system python3, else exit 2 with the fix."""
    here = os.path.realpath(sys.executable or "")
    if (os.environ.get(REEXEC_GUARD) is None and os.access(SYSTEM_PYTHON, os.X_OK)
            and os.path.realpath(SYSTEM_PYTHON) != here):
        os.environ[REEXEC_GUARD] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(__file__)] + argv)
    sys.stderr.write(f"make_report.py: error: {_IMPORT_ERROR} (install the Debian packages "
                     "python3-numpy python3-matplotlib, optionally python3-sklearn)\n")
    sys.exit(2)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if _IMPORT_ERROR is not None:
        reexec_or_exit(argv)
    try:
        runs = load_runs(args.runs)
        analysis = load_analysis(args.analysis)
        os.makedirs(args.out, exist_ok=True)
        use_tsne = tsne_available()
        notes = [] if use_tsne or args.tsne_points == 0 else [
            "scikit-learn is not installed (Debian python3-sklearn): token maps show PCA only, "
            "no t-SNE."]
        plt.rcParams["svg.hashsalt"] = "xmoe-report"  # reproducible SVG ids
        sections = build_sections(runs, analysis, args.out, args.tsne_points, use_tsne)
        write_page(args.out, runs, sections, notes)
    except ReportError as exc:
        sys.stderr.write(f"make_report.py: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"make_report.py: error: {exc}\n")
        return 2
    if not args.quiet:
        print(os.path.join(args.out, "index.html"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
