"""Tests of scripts/report/make_report.py on fake run and analysis folders written here.

Run: python3 -m unittest discover -s tests/report -v   (needs numpy and matplotlib; t-SNE
panels are checked when scikit-learn is installed). The fake files follow docs/run-directory.md.
"""

import contextlib
import html.parser
import importlib.util
import io
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT_DIR = os.path.join(HERE, "..", "..", "scripts", "report")
SCRIPT = os.path.join(SCRIPT_DIR, "make_report.py")
sys.path.insert(0, SCRIPT_DIR)

import make_report as mr  # noqa: E402

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None

N_EXPERTS = 4
MOE_LAYERS = (1, 3)
LANGUAGES = ("de", "en", "fr")
VALID_STEPS = (100, 200, 300)

FIGURES = ("train_loss", "valid_ppl", "language_ppl", "rc_training", "rf_training",
           "rc_checkpoints", "rf_checkpoints", "consistency", "load-smoe_top1",
           "token_map-smoe_top1-layer1")


def train_line(step, moe):
    counts = [[10 + step % 7, 20, 30, 40 - step % 5] for _ in MOE_LAYERS] if moe else []
    return {"kind": "train", "step": step, "loss": 9.0 - step / 100, "mlm_loss": 8.9 - step / 100,
            "aux_loss": 0.01 if moe else 0.0, "lr": 4e-4, "grad_norm": 1.5, "tokens": step * 512,
            "tokens_per_s": 1000.0, "elapsed_s": step / 10, "expert_counts": counts}


def moe_entry(layer, step, first):
    load = np.array([1.0 + step / 100, 2.0, 3.0, 4.0 - layer / 4])
    load = (load / load.sum()).tolist()
    return {"layer": layer, "load": load, "load_cv": 0.3 - step / 3000,
            "load_max_over_mean": 1.6, "load_entropy": 1.3, "dropped_fraction": 0.0,
            "rc_router": None if (layer == 3 and step == 200) else 0.5 + step / 1000,
            "rc_hidden": 0.8 - step / 1000, "rf": None if first else 0.1 / (step / 100),
            "rf_step_gap": None if first else 100}


def valid_line(step, moe, offset):
    languages = {lang: {"loss": 5.0 - step / 200 + offset + i / 10,
                        "ppl": math.exp(5.0 - step / 200 + offset + i / 10), "tokens": 1000}
                 for i, lang in enumerate(LANGUAGES)}
    loss = 5.0 - step / 200 + offset
    return {"kind": "valid", "step": step, "valid_loss": loss, "valid_ppl": math.exp(loss),
            "lr": 4e-4, "languages": languages,
            "moe": [moe_entry(l, step, step == VALID_STEPS[0]) for l in MOE_LAYERS] if moe else [],
            "analysis_ms": 12.5}


def write_run(root, folder, name, moe, offset):
    run_dir = os.path.join(root, folder)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump({"name": name, "data": {"languages": list(LANGUAGES)}}, f)
    lines = []
    for step in range(50, 301, 50):
        lines.append(train_line(step, moe))
        if step in VALID_STEPS:
            lines.append(valid_line(step, moe, offset))
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return run_dir


def write_safetensors(path, tensors):
    """A safetensors file written with numpy: header length, JSON header, raw data."""
    codes = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array).tobytes()
        header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))


def write_analysis(root, n_tokens=150):
    analysis_dir = os.path.join(root, "analysis")
    os.makedirs(analysis_dir)
    checkpoints = [{"step": step, "lr": 4e-4,
                    "layers": [moe_entry(l, step, step == 100) for l in MOE_LAYERS]}
                   for step in VALID_STEPS]
    windows = [{"start_step": s - 99, "end_step": s, "pearson_mean": 0.5 + s / 1000}
               for s in VALID_STEPS]
    analysis = {
        "runs": [{"dir": "a", "name": "smoe/top1", "checkpoints": checkpoints},
                 {"dir": "b", "name": "smoe-seed2", "checkpoints": checkpoints}],
        "consistency": {
            "window_steps": 100,
            "layers": [{"layer": l, "mean": 0.7, "windows": windows} for l in MOE_LAYERS],
            "token_agreement": [{"layer": 1, "runs": ["smoe/top1", "smoe-seed2"],
                                 "agreement": 0.8}]}}
    with open(os.path.join(analysis_dir, "analysis.json"), "w") as f:
        json.dump(analysis, f)
    rng = np.random.RandomState(0)
    expert = rng.randint(0, N_EXPERTS, n_tokens).astype(np.int64)
    centres = rng.normal(0, 5, (N_EXPERTS, 8))
    h = (centres[expert] + rng.normal(0, 1, (n_tokens, 8))).astype(np.float32)
    write_safetensors(os.path.join(analysis_dir, "token_map-smoe_top1-layer1.safetensors"), {
        "h": h, "router_input": h[:, :4].copy(), "expert": expert,
        "language": (np.arange(n_tokens) % len(LANGUAGES)).astype(np.int64),
        "pca": rng.normal(0, 1, (n_tokens, 2))})
    return analysis_dir


def run_script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=120)


def run_main(*args):
    """make_report.main in this process (no interpreter start-up): (exit status, stderr)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = mr.main(list(args))
        except SystemExit as exc:  # argparse
            status = exc.code
    return subprocess.CompletedProcess(args, status, "", stderr.getvalue())


class LinkCollector(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.images = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src"))
        for key in ("src", "href"):
            if attrs.get(key) is not None:
                self.links.append(attrs[key])


class FullReport(unittest.TestCase):
    """Two runs (one MoE, one dense) with an analysis folder: every figure is drawn."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="xmoe_report_")
        root = cls.tmp.name
        # The run is named "smoe/top1" in config.json; file names use the slug "smoe_top1".
        cls.smoe = write_run(root, "run-a", "smoe/top1", moe=True, offset=0.0)
        cls.dense = write_run(root, "run-b", "dense", moe=False, offset=0.2)
        cls.analysis = write_analysis(root)
        cls.out = os.path.join(root, "report")
        cls.result = run_script("--out", cls.out, "--analysis", cls.analysis, cls.smoe, cls.dense)
        with open(os.path.join(cls.out, "index.html"), encoding="utf-8") as f:
            cls.page = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_exit_status(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)

    def test_every_figure_written_as_png_and_svg(self):
        for stem in FIGURES:
            for ext, magic in ((".png", b"\x89PNG"), (".svg", b"<?xml")):
                path = os.path.join(self.out, stem + ext)
                self.assertTrue(os.path.isfile(path), path)
                with open(path, "rb") as f:
                    self.assertEqual(f.read(len(magic)), magic, path)

    def test_page_links_only_existing_local_files(self):
        collector = LinkCollector()
        collector.feed(self.page)
        self.assertGreaterEqual(len(collector.images), len(FIGURES))
        for link in collector.links:
            self.assertNotIn("://", link)
            self.assertFalse(link.startswith("/"), link)
            path = os.path.join(self.out, link)
            self.assertTrue(os.path.isfile(path) and os.path.getsize(path) > 0, link)
        self.assertNotIn("<script", self.page)

    def test_page_has_summary_captions_and_skips(self):
        for text in ("<title>xmoe report</title>", "smoe/top1", "dense", "final valid ppl",
                     "ppl de", "mean load CV", "mean RF", "<figcaption>", "Token agreement",
                     # the dense run has no MoE layer: its heatmap is skipped, with the reason
                     "Expert load over training: dense</strong>: not drawn"):
            self.assertIn(text, self.page)
        # smoe final valid ppl = exp(5 − 300/200) = exp(3.5) ≈ 33.12
        self.assertIn(mr.fmt(math.exp(3.5)), self.page)
        self.assertEqual(mr.fmt(math.exp(3.5)), "33.12")

    @unittest.skipUnless(HAVE_SKLEARN, "scikit-learn not installed")
    def test_token_map_has_tsne(self):
        self.assertIn("by PCA and t-SNE", self.page)


class WithoutAnalysis(unittest.TestCase):
    def test_dense_run_alone_skips_routing_figures(self):
        with tempfile.TemporaryDirectory(prefix="xmoe_report_") as root:
            dense = write_run(root, "run-b", "dense", moe=False, offset=0.0)
            os.remove(os.path.join(dense, "config.json"))  # the name falls back to the folder
            out = os.path.join(root, "report")
            result = run_main("--out", out, dense)
            self.assertEqual(result.returncode, 0, result.stderr)
            for stem in ("train_loss", "valid_ppl", "language_ppl"):
                self.assertGreater(os.path.getsize(os.path.join(out, stem + ".png")), 0)
            for stem in ("rc_training", "rf_training", "load-run-b"):
                self.assertFalse(os.path.exists(os.path.join(out, stem + ".png")), stem)
            with open(os.path.join(out, "index.html"), encoding="utf-8") as f:
                page = f.read()
            self.assertIn("<td>run-b</td>", page)
            self.assertIn("no analysis directory given", page)
            self.assertIn("dense runs only", page)


class Errors(unittest.TestCase):
    """Exit status 2 and one clear line; run in-process except the first (start-up cost)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="xmoe_report_")
        self.root = self.tmp.name
        self.out = os.path.join(self.root, "report")

    def tearDown(self):
        self.tmp.cleanup()

    def assert_fails(self, result, *texts):
        self.assertEqual(result.returncode, 2, result.stderr)
        for text in texts:
            self.assertIn(text, result.stderr)

    def test_missing_run_dir(self):
        missing = os.path.join(self.root, "nope")
        self.assert_fails(run_main("--out", self.out, missing), missing, "no such run directory")

    def test_run_dir_without_metrics(self):
        os.makedirs(os.path.join(self.root, "empty"))
        self.assert_fails(run_main("--out", self.out, os.path.join(self.root, "empty")),
                          "metrics.jsonl: missing")

    def test_malformed_line_names_file_and_line(self):
        run = write_run(self.root, "run", "r", moe=True, offset=0.0)
        path = os.path.join(run, "metrics.jsonl")
        with open(path) as f:
            lines = f.readlines()
        lines[2] = '{"kind": "train", "step": 150, "loss": \n'
        with open(path, "w") as f:
            f.writelines(lines)
        self.assert_fails(run_script("--out", self.out, run), f"{path}:3:", "malformed")

    def test_line_without_kind_or_step(self):
        run = write_run(self.root, "run", "r", moe=False, offset=0.0)
        path = os.path.join(run, "metrics.jsonl")
        with open(path, "a") as f:
            f.write('{"step": 400}\n[1, 2]\n')
        self.assert_fails(run_main("--out", self.out, run), f"{path}:10:", '"kind"')

    def test_missing_analysis_dir(self):
        run = write_run(self.root, "run", "r", moe=False, offset=0.0)
        self.assert_fails(run_main("--out", self.out, "--analysis",
                                   os.path.join(self.root, "none"), run),
                          "no such analysis directory")


class Readers(unittest.TestCase):
    def test_safetensors_round_trip(self):
        tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                   "b": np.array([1.5, -2.0], dtype=np.float64),
                   "c": np.array([[7], [-8]], dtype=np.int64)}
        with tempfile.TemporaryDirectory() as root:
            path = os.path.join(root, "t.safetensors")
            write_safetensors(path, tensors)
            back = mr.read_safetensors(path)
            self.assertEqual(sorted(back), ["a", "b", "c"])
            for name, array in tensors.items():
                self.assertEqual(back[name].dtype, array.dtype)
                np.testing.assert_array_equal(back[name], array)
            with open(path, "r+b") as f:  # header length past the end of the file
                f.write(struct.pack("<Q", 1 << 40))
            with self.assertRaises(ValueError):
                mr.read_safetensors(path)

    def test_resumed_run_keeps_latest_line_per_step(self):
        with tempfile.TemporaryDirectory() as root:
            path = os.path.join(root, "metrics.jsonl")
            with open(path, "w") as f:
                for step, loss in ((100, 3.0), (200, 2.0), (200, 2.5), (150, 2.7)):
                    f.write(json.dumps({"kind": "train", "step": step, "loss": loss}) + "\n")
                f.write(json.dumps({"kind": "future", "step": 1}) + "\n\n")
            train, valid = mr.read_metrics(path)
            self.assertEqual([(r["step"], r["loss"]) for r in train],
                             [(100, 3.0), (150, 2.7), (200, 2.5)])
            self.assertEqual(valid, [])

    def test_layer_series_drops_null_and_nan(self):
        points = [(100, [{"layer": 1, "rf": None}, {"layer": 3, "rf": 0.2}]),
                  (200, [{"layer": 1, "rf": 0.1}, {"layer": 3, "rf": float("nan")}])]
        self.assertEqual(mr.layer_series(points, "rf"), {1: ([200], [0.1]), 3: ([100], [0.2])})


if __name__ == "__main__":
    unittest.main()
