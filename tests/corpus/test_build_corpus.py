"""Tests of scripts/corpus/build_corpus.py on small fixtures written here (no network, no apt).

Run: python3 -m unittest discover -s tests/corpus -v
With XMOE_CLI set to the xmoe executable, `xmoe corpus build` is checked too.
"""

import contextlib
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT_DIR = os.path.join(HERE, "..", "..", "scripts", "corpus")
sys.path.insert(0, SCRIPT_DIR)

import build_corpus as bc  # noqa: E402

HAVE_GROFF = shutil.which("groff") is not None

PAGE_TEMPLATE = """<!DOCTYPE html>
<html lang="{lang}"><head><title>{title}</title>
<script>var x = "<p id='par_script'>not text</p>";</script></head>
<body>
<header id="TopLeftHeader"><a class="logo" href="x"><p dir="auto">Help for LibreOffice</p></a></header>
<aside class="leftside"><p id="par_aside" dir="auto">Search in all modules of the help</p></aside>
<div id="DisplayArea">
{body}
</div>
<footer><div id="DEBUG" class="debug"><p dir="auto">This page is: /text/x.xhp</p>
<p id="bm_module" dir="auto">bookmark module text here</p></div></footer>
</body></html>
"""

EN_PAGE1 = """<h1 id="hd_id1" dir="auto">Load and Save Options</h1>
<p id="par_id1" class="paragraph" dir="auto"><span class="avis">Specifies general
  settings for loading &amp; saving documents.</span></p>
<p id="par_id2" class="paragraph" dir="auto">Tools - Options - Load/Save - General</p>
<p id="par_id3" class="code" dir="auto">SELECT field1, field2 FROM table1</p>
<p id="par_id4" class="paragraph" dir="auto">Choose <span id="swln1" class="switchinline"><span hidden="true" id="MAC1" class="MAC">LibreOffice - Preferences</span><span hidden="true" id="default1"><span class="emph">Tools - Options</span></span></span> to open the dialog.<br>Then press OK.</p>
<p id="par_id5" class="paragraph" dir="auto">Too short.</p>
<p id="par_id1" class="paragraph" dir="auto">A repeated id: only the first element counts.</p>
<p dir="auto">A paragraph without an id is left out of the corpus.</p>
"""

DE_PAGE1 = """<h1 id="hd_id1" dir="auto">Optionen Laden und Speichern</h1>
<p id="par_id1" class="paragraph" dir="auto"><span class="avis">Hier legen Sie allgemeine
  Einstellungen für das Laden &amp; Speichern fest.</span></p>
<p id="par_id2" class="paragraph" dir="auto">Tools - Options - Load/Save - General</p>
<p id="par_id3" class="code" dir="auto">SELECT field1, field2 FROM table1</p>
<p id="par_id4" class="paragraph" dir="auto">Wählen Sie <span id="swln1" class="switchinline"><span hidden="true" id="MAC1" class="MAC">LibreOffice – Einstellungen</span><span hidden="true" id="default1"><span class="emph">Extras – Optionen</span></span></span>, um den Dialog zu öffnen.<br>Dann OK drücken.</p>
"""

EN_MAN = r""".TH DEMO 1 2024 "xmoe 0.1" "User Commands"
.SH NAME
demo \- show a demonstration of the corpus builder
.SH DESCRIPTION
.B demo
prints a friendly greeting to standard output and exits.
A second sentence continues the same paragraph
across several source lines.
.PP
The options are described below in detail.
.TP
.B \-v
print the version number and exit successfully
"""

DE_MAN = r""".\" -*- coding: UTF-8 -*-
.TH DEMO 1 2024 "xmoe 0.1" "Benutzerbefehle"
.SH BEZEICHNUNG
demo \- zeigt eine Vorführung des Korpus\-Erzeugers
.SH BESCHREIBUNG
.B demo
gibt einen freundlichen Gruß auf der Standardausgabe aus und beendet sich.
Ein zweiter Satz setzt denselben Absatz
über mehrere Quellzeilen fort.
.PP
The options are described below in detail.
.TP
.B \-v
gibt die Versionsnummer aus und beendet sich erfolgreich
"""

EN_FORTUNES = """The best way to predict the future is to invent it.
\t\t-- Alan Kay
%
Yes.
%
A duplicated fortune appears twice in this file.
%
Simplicity is prerequisite
for reliability.
\t\t-- Edsger W. Dijkstra
%
A duplicated fortune appears twice in this file.
%
"""

DE_FORTUNES = """Wer zuletzt lacht, hat den Witz nicht verstanden.
%
Auch ein blindes Huhn findet mal ein Korn.
%
"""


def write(path, text, gz=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text.encode("utf-8")
    if gz:
        data = gzip.compress(data, mtime=0)
    with open(path, "wb") as f:
        f.write(data)


def make_fixtures(top):
    """Extracted-package trees under top; returns build() inputs (en, de of each source)."""
    lo_en = os.path.join(top, "lo-en", "usr/share/libreoffice/help/en-US")
    lo_de = os.path.join(top, "lo-de", "usr/share/libreoffice/help/de")
    write(os.path.join(lo_en, "text/shared/optionen/01020000.html"),
          PAGE_TEMPLATE.format(lang="en-US", title="Load/Save", body=EN_PAGE1))
    write(os.path.join(lo_de, "text/shared/optionen/01020000.html"),
          PAGE_TEMPLATE.format(lang="de", title="Laden/Speichern", body=DE_PAGE1))
    # Many pages so that every split gets some; page 7 repeats a paragraph of page 3.
    for n in range(60):
        en = (f'<p id="par_a{n}" class="paragraph">English help page number {n} explains '
              f'feature {n} in detail.</p>\n'
              f'<p id="par_b{n}" class="paragraph">The second paragraph of page {n} is here.</p>')
        de = (f'<p id="par_a{n}" class="paragraph">Deutsche Hilfeseite Nummer {n} erklärt '
              f'Funktion {n} genau.</p>\n'
              f'<p id="par_b{n}" class="paragraph">Der zweite Absatz der Seite {n} steht hier.</p>')
        if n == 7:
            en += '\n<p id="par_c7">English help page number 3 explains feature 3 in detail.</p>'
        write(os.path.join(lo_en, f"text/scalc/guide/page{n:02d}.html"),
              PAGE_TEMPLATE.format(lang="en-US", title=str(n), body=en))
        write(os.path.join(lo_de, f"text/scalc/guide/page{n:02d}.html"),
              PAGE_TEMPLATE.format(lang="de", title=str(n), body=de))
    write(os.path.join(lo_en, "bookmarks.js"), "var bookmarks = [];")

    man_en = os.path.join(top, "man-en", "usr/share/man")
    man_de = os.path.join(top, "man-de", "usr/share/man/de")
    write(os.path.join(man_en, "man1/demo.1.gz"), EN_MAN, gz=True)
    write(os.path.join(man_en, "man1/demo-alias.1.gz"), ".so man1/demo.1\n", gz=True)
    write(os.path.join(man_de, "man1/demo.1.gz"), DE_MAN, gz=True)

    fo_en = os.path.join(top, "fortunes-en", "usr/share/games/fortunes")
    fo_de = os.path.join(top, "fortunes-de", "usr/share/games/fortunes/de")
    write(os.path.join(fo_en, "wisdom"), EN_FORTUNES)
    write(os.path.join(fo_en, "wisdom.dat"), "\x00\x00binary index")
    os.symlink("wisdom", os.path.join(fo_en, "wisdom.u8"))
    write(os.path.join(fo_en, "off", "rude"), "An offensive fortune that must be skipped.\n%\n")
    write(os.path.join(fo_en, "ascii-art"), "  /\\_/\\  a cat drawn in ascii\n%\n")
    write(os.path.join(fo_de, "sprueche"), DE_FORTUNES)

    def item(name, source, lang, root):
        return {"name": name, "version": "1.0", "source": source, "lang": lang,
                "output": True, "root": os.path.join(top, root)}
    inputs = [item("libreoffice-help-en-us", "libreoffice", "en", "lo-en"),
              item("libreoffice-help-de", "libreoffice", "de", "lo-de")]
    if HAVE_GROFF:
        inputs += [item("manpages", "manpages", "en", "man-en"),
                   item("manpages-de", "manpages", "de", "man-de")]
    inputs += [item("fortunes", "fortunes", "en", "fortunes-en"),
               item("fortunes-de", "fortunes", "de", "fortunes-de")]
    return inputs


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


class TextTests(unittest.TestCase):
    def test_normalise_whitespace(self):
        self.assertEqual(bc.normalise_whitespace("  a\tb\n\nc\u00a0d  "), "a b c d")
        self.assertEqual(bc.normalise_whitespace("\x1b[32mgreen\x1b[m text\x15"), "green text")
        self.assertEqual(bc.normalise_whitespace("日本 語 abc 中文", "zh"), "日本語 abc 中文")
        self.assertEqual(bc.normalise_whitespace("日本 語", "de"), "日本 語")
        self.assertEqual(bc.normalise_whitespace("│ATF_COM │ Lookup ─── done │"),
                         "ATF_COM Lookup done")

    def test_is_too_short(self):
        self.assertTrue(bc.is_too_short("Two words", "en"))
        self.assertTrue(bc.is_too_short("a b c d", "en"))           # 7 characters
        self.assertFalse(bc.is_too_short("Three whole words", "en"))
        self.assertTrue(bc.is_too_short("ファイルを開く", "ja"))      # 7 characters
        self.assertFalse(bc.is_too_short("ファイルを開いて保存します", "ja"))

    def test_lacks_script(self):
        self.assertTrue(bc.lacks_script("Defines settings for HTML pages.", "ja"))
        self.assertFalse(bc.lacks_script("HTML ページの設定を定義します。", "ja"))
        self.assertTrue(bc.lacks_script("ls -l /tmp", "ru"))
        self.assertFalse(bc.lacks_script("Выводит список файлов.", "ru"))
        self.assertFalse(bc.lacks_script("Defines settings for HTML pages.", "de"))

    def test_split_for_key(self):
        self.assertEqual(bc.split_for_key("libreoffice:text/a.html"),
                         bc.split_for_key("libreoffice:text/a.html"))
        counts = {s: 0 for s in bc.SPLITS}
        for i in range(20000):
            counts[bc.split_for_key(f"doc{i}")] += 1
        self.assertAlmostEqual(counts["train"] / 20000, 0.90, delta=0.01)
        self.assertAlmostEqual(counts["valid"] / 20000, 0.05, delta=0.01)
        self.assertAlmostEqual(counts["test"] / 20000, 0.05, delta=0.01)


class ExtractionTests(unittest.TestCase):
    def test_parse_help_html(self):
        html = PAGE_TEMPLATE.format(lang="en-US", title="t", body=EN_PAGE1)
        self.assertEqual(bc.parse_help_html(html), [
            ("hd_id1", "Load and Save Options"),
            ("par_id1", "Specifies general settings for loading & saving documents."),
            ("par_id2", "Tools - Options - Load/Save - General"),
            ("par_id4", "Choose Tools - Options to open the dialog. Then press OK."),
            ("par_id5", "Too short."),
        ])

    def test_parse_fortunes(self):
        self.assertEqual(bc.parse_fortunes(EN_FORTUNES), [
            "The best way to predict the future is to invent it. -- Alan Kay",
            "Yes.",
            "A duplicated fortune appears twice in this file.",
            "Simplicity is prerequisite for reliability. -- Edsger W. Dijkstra",
            "A duplicated fortune appears twice in this file.",
        ])
        self.assertEqual(bc.parse_fortunes("one entry\r\n%\r\ntwo entry\n%"),
                         ["one entry", "two entry"])

    def test_fortune_files_skip_off_dat_links_ascii(self):
        with tempfile.TemporaryDirectory() as top:
            make_fixtures(top)
            files = [rel for rel, _ in bc.fortune_files(os.path.join(top, "fortunes-en"),
                                                        "fortunes")]
            self.assertEqual(files, ["wisdom"])

    def test_clean_rendered_man(self):
        self.assertEqual(bc.clean_rendered_man("B\bBo\bol\bld _\bu_\bn \x1b[1mx\x1b[0m"),
                         "Bold un x")
        self.assertEqual(bc.clean_rendered_man("\u00dc\b\u00dcber"), "\u00dcber")

    @unittest.skipUnless(HAVE_GROFF, "groff not installed")
    def test_render_man_paragraphs(self):
        paragraphs = bc.man_paragraphs(bc.render_man(EN_MAN), "en")
        self.assertIn("demo prints a friendly greeting to standard output and exits. A second "
                      "sentence continues the same paragraph across several source lines.",
                      paragraphs)
        self.assertEqual(paragraphs[0], "NAME")
        self.assertTrue(paragraphs[1].startswith("demo "))
        self.assertIn("The options are described below in detail.", paragraphs)
        self.assertFalse(any("DEMO(1)" in p for p in paragraphs))   # header and footer gone
        self.assertFalse(any("\b" in p or "\x1b" in p for p in paragraphs))

    @unittest.skipUnless(HAVE_GROFF, "groff not installed")
    def test_render_mdoc_page(self):
        source = (".Dd January 1, 2024\n.Dt DEMO 1\n.Os\n.Sh NAME\n.Nm demo\n"
                  ".Nd show a demonstration\n.Sh DESCRIPTION\nThe\n.Nm\n"
                  "utility prints a friendly greeting.\n")
        paragraphs = bc.man_paragraphs(bc.render_man(source), "en")
        self.assertIn("The demo utility prints a friendly greeting.", paragraphs)

    @unittest.skipUnless(HAVE_GROFF, "groff not installed")
    def test_man_page_files_skip_so_aliases(self):
        with tempfile.TemporaryDirectory() as top:
            make_fixtures(top)
            root = os.path.join(top, "man-en")
            keys = [k for k, _ in bc.man_page_files(root, english=True)]
            self.assertEqual(keys, ["man1/demo-alias.1", "man1/demo.1"])
            docs = {r[0] for r in bc.extract_manpages(root, "en")}
            self.assertEqual(docs, {"manpages:man1/demo.1"})


class PipelineTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.top = self.tmp.name
        self.inputs = make_fixtures(os.path.join(self.top, "fixtures"))

    def tearDown(self):
        self.tmp.cleanup()

    def run_build(self, name, **kw):
        out = os.path.join(self.top, name)
        manifest = bc.build(self.inputs, out, ["en", "de"], bc.SOURCES, write_keys=True, **kw)
        return out, manifest

    def test_corpus_content(self):
        out, manifest = self.run_build("out")
        en = sum((read_lines(os.path.join(out, s, "en.txt")) for s in bc.SPLITS), [])
        de = sum((read_lines(os.path.join(out, s, "de.txt")) for s in bc.SPLITS), [])
        self.assertIn("Specifies general settings for loading & saving documents.", en)
        self.assertIn("Tools - Options - Load/Save - General", en)
        # identical to the English paragraph with the same key: dropped in German
        self.assertNotIn("Tools - Options - Load/Save - General", de)
        self.assertIn("Wählen Sie Extras – Optionen, um den Dialog zu öffnen. Dann OK drücken.", de)
        # too short, code, hidden variants, page furniture
        for text in ("Too short.", "SELECT field1, field2 FROM table1", "Help for LibreOffice",
                     "Search in all modules of the help", "bookmark module text here",
                     "A paragraph without an id is left out of the corpus.", "Yes."):
            self.assertNotIn(text, en)
        self.assertFalse(any("Preferences" in p or "not text" in p for p in en))
        # dedupe within a language (a help paragraph repeated on another page, a fortune)
        self.assertEqual(en.count("English help page number 3 explains feature 3 in detail."), 1)
        self.assertEqual(en.count("A duplicated fortune appears twice in this file."), 1)
        self.assertIn("Wer zuletzt lacht, hat den Witz nicht verstanden.", de)
        self.assertFalse(any("offensive" in p or "cat drawn" in p for p in en))
        if HAVE_GROFF:
            self.assertIn("The options are described below in detail.", en)
            self.assertNotIn("The options are described below in detail.", de)
            self.assertIn("demo gibt einen freundlichen Gruß auf der Standardausgabe aus und "
                          "beendet sich. Ein zweiter Satz setzt denselben Absatz über mehrere "
                          "Quellzeilen fort.", de)
        self.assertEqual(len(en), len(set(en)))
        self.assertEqual(len(de), len(set(de)))
        for line in en + de:
            self.assertEqual(line, line.strip())
            self.assertNotIn("\t", line)
        # manifest counts agree with the files
        for split in bc.SPLITS:
            for lang in ("en", "de"):
                path = os.path.join(out, split, lang + ".txt")
                with open(path, "rb") as f:
                    data = f.read()
                entry = manifest["splits"][split][lang]
                self.assertEqual(entry["lines"], data.count(b"\n"))
                self.assertEqual(entry["bytes"], len(data))
        self.assertGreater(manifest["filtering"]["identical_to_english"]["de"], 0)
        self.assertGreater(manifest["filtering"]["duplicate"]["en"], 0)
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            self.assertEqual(json.load(f), manifest)

    def test_no_document_in_two_splits(self):
        out, manifest = self.run_build("out")
        split_of_doc = {}
        for split in bc.SPLITS:
            self.assertGreater(manifest["splits"][split]["en"]["lines"], 0, split)
            for lang in ("en", "de"):
                keys = read_lines(os.path.join(out, split, lang + ".keys"))
                lines = read_lines(os.path.join(out, split, lang + ".txt"))
                self.assertEqual(len(keys), len(lines))
                for key in keys:
                    doc = key.split("#", 1)[0]
                    self.assertEqual(split_of_doc.setdefault(doc, split), split, doc)
                    self.assertEqual(bc.split_for_key(doc), split)
        # a German paragraph and its English original share a document, hence a split
        self.assertIn("libreoffice:text/shared/optionen/01020000.html", split_of_doc)

    def test_deterministic(self):
        out1, m1 = self.run_build("out1")
        out2, m2 = self.run_build("out2")
        self.assertEqual(m1, m2)
        names = []
        for dirpath, _, files in os.walk(out1):
            for name in files:
                names.append(os.path.relpath(os.path.join(dirpath, name), out1))
        self.assertIn("manifest.json", names)
        self.assertGreaterEqual(len(names), 13)
        for rel in sorted(names):
            with open(os.path.join(out1, rel), "rb") as f1, \
                    open(os.path.join(out2, rel), "rb") as f2:
                self.assertEqual(f1.read(), f2.read(), rel)
        self.assertFalse(os.path.exists(os.path.join(out2, "train", "en.txt.tmp")))

    def test_max_paragraphs_and_language_subset(self):
        out = os.path.join(self.top, "small")
        manifest = bc.build(self.inputs, out, ["de"], bc.SOURCES, max_per_language=5)
        self.assertEqual(manifest["totals"]["de"]["lines"], 5)
        self.assertEqual(sorted(os.listdir(os.path.join(out, "train"))), ["de.txt"])
        self.assertEqual(manifest["options"]["max_paragraphs_per_language"], 5)

    def test_plan_adds_english_reference(self):
        plan = bc.plan_packages(["de"], ["libreoffice", "fortunes"])
        self.assertEqual(plan, [("libreoffice", "libreoffice-help-en-us", "en", False),
                                ("libreoffice", "libreoffice-help-de", "de", True),
                                ("fortunes", "fortunes-de", "de", True)])


class CommandLineTests(unittest.TestCase):
    def test_bad_options_exit_nonzero(self):
        for argv in (["--languages", "en,xx"], ["--sources", "books"],
                     ["--max-paragraphs-per-language", "-1"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                self.assertEqual(bc.main(argv + ["--out", "/nonexistent/x"]), 1, argv)
            self.assertIn("build_corpus.py: error:", err.getvalue())

    def test_script_runs_with_system_python(self):
        for python in sorted({sys.executable, "/usr/bin/python3"}):
            if not os.path.exists(python):
                continue
            proc = subprocess.run([python, os.path.join(SCRIPT_DIR, "build_corpus.py"),
                                   "--languages", "xx"], capture_output=True, text=True)
            self.assertEqual(proc.returncode, 1, python)
            self.assertIn("unknown language 'xx'", proc.stderr)

    @unittest.skipUnless(os.environ.get("XMOE_CLI"), "XMOE_CLI not set")
    def test_xmoe_corpus_build(self):
        cli = os.environ["XMOE_CLI"]
        proc = subprocess.run([cli, "corpus", "build", "--help"], capture_output=True, text=True)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("--languages", proc.stdout)
        proc = subprocess.run([cli, "corpus", "build", "--languages", "xx"],
                              capture_output=True, text=True)
        self.assertEqual(proc.returncode, 1)
        self.assertIn("unknown language 'xx'", proc.stderr)
        proc = subprocess.run([cli, "corpus"], capture_output=True, text=True)
        self.assertNotEqual(proc.returncode, 0)


if __name__ == "__main__":
    unittest.main()
