#!/usr/bin/env python3
"""Builds xmoe's multilingual plain-text corpus from Debian packages.

Sources (docs/corpus.md has the details and the licences):
  libreoffice  LibreOffice help pages, libreoffice-help-<lang>: one paragraph per <p>/<h1..h6>
               with an id, keyed by (page path, element id); the key is the same in every
               language, so the help is a parallel corpus.
  manpages     man pages (manpages, manpages-<lang>), rendered with groff, one paragraph per
               output line.
  fortunes     fortune cookies (fortunes, fortunes-<lang>), one paragraph per %-separated entry.

Output: <out>/<split>/<lang>.txt (one paragraph per line, UTF-8) for split in train/valid/test,
and <out>/manifest.json. The split of a paragraph is a hash of its document's
language-independent key (help page path, man page name), so a paragraph and its translations
always land in the same split. Two runs over the same packages give byte-identical output.

Python 3 standard library only. Usable as a module: parse_help_html, parse_fortunes,
render_man, clean_rendered_man, man_paragraphs, split_for_key, normalise_whitespace,
is_too_short, collect_package, assemble and build are what tests use.
"""

import argparse
import concurrent.futures
import functools
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from html.parser import HTMLParser

FORMAT = "xmoe-corpus/1"

# Output languages in canonical order.
LANGUAGES = ["en", "de", "fr", "es", "it", "ru", "pt", "nl", "pl", "ja", "zh", "uk", "cs"]
SOURCES = ["libreoffice", "manpages", "fortunes"]
SPLITS = ["train", "valid", "test"]
# Per-mille thresholds of the split hash: [0, 900) train, [900, 950) valid, [950, 1000) test.
SPLIT_PER_MILLE = {"train": 900, "valid": 50, "test": 50}
CJK_LANGUAGES = {"ja", "zh"}
MIN_WORDS = 3
MIN_CHARS = 10
CJK_MIN_CHARS = 10

# (package, language) per source; the English package comes first: it is the reference that
# untranslated paragraphs of the other languages are compared with.
PACKAGES = {
    "libreoffice": [("libreoffice-help-en-us", "en"), ("libreoffice-help-de", "de"),
                    ("libreoffice-help-fr", "fr"), ("libreoffice-help-es", "es"),
                    ("libreoffice-help-it", "it"), ("libreoffice-help-ru", "ru"),
                    ("libreoffice-help-pt-br", "pt"), ("libreoffice-help-nl", "nl"),
                    ("libreoffice-help-pl", "pl"), ("libreoffice-help-ja", "ja"),
                    ("libreoffice-help-zh-cn", "zh")],
    "manpages": [("manpages", "en"), ("manpages-de", "de"), ("manpages-fr", "fr"),
                 ("manpages-es", "es"), ("manpages-ru", "ru"), ("manpages-pl", "pl"),
                 ("manpages-it", "it"), ("manpages-nl", "nl"), ("manpages-pt-br", "pt"),
                 ("manpages-uk", "uk"), ("manpages-cs", "cs")],
    "fortunes": [("fortunes", "en"), ("fortunes-de", "de"), ("fortunes-es", "es"),
                 ("fortunes-it", "it"), ("fortunes-ru", "ru"), ("fortunes-pl", "pl"),
                 ("fortunes-cs", "cs"), ("fortunes-zh", "zh")],
}
# Fortune files that are not in their package's language (klasik-sk of fortunes-cs is Slovak)
# or are pictures rather than text.
FORTUNE_EXCLUDE = {"fortunes-cs": {"klasik-sk"}}
FORTUNE_EXCLUDE_SUBSTRINGS = ("ascii",)

# -mandoc: the man macros, or mdoc for the BSD-style pages
GROFF_ARGS = ["-K", "utf8", "-t", "-Tutf8", "-mandoc",
              # continuous rendering, no hyphenation, lines long enough that a filled
              # paragraph is one output line, no bold/underline overstriking
              "-rcR=1", "-rHY=0", "-rLL=10000n", "-P-c", "-P-b", "-P-u"]


class CorpusError(Exception):
    """A failure with a message for the user."""


# ---- text normalisation ----------------------------------------------------

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]")
_OVERSTRIKE_RE = re.compile(r".\x08")
# control characters (Unicode category Cc), soft hyphen, byte order mark
_DROP_CHARS_RE = re.compile("[\x00-\x1f\x7f-\x9f\u00ad\ufeff]")
# box-drawing characters (tbl table rules, tree drawings) become spaces
_BOX_CHARS_RE = re.compile("[\u2500-\u257f]+")


def _is_cjk(ch):
    cp = ord(ch)
    return (0x2E80 <= cp <= 0x30FF or 0x3400 <= cp <= 0x4DBF or 0x4E00 <= cp <= 0x9FFF
            or 0xF900 <= cp <= 0xFAFF or 0xFE30 <= cp <= 0xFE4F or 0xFF00 <= cp <= 0xFFEF
            or 0x20000 <= cp <= 0x3FFFF)


def normalise_whitespace(text, lang=None):
    """Collapses every whitespace run to one space, strips the ends, removes control
    characters (ANSI escapes included) and soft hyphens, turns box-drawing characters into
    spaces. For ja/zh a space between two CJK
    characters (a joined line break) is removed."""
    text = _ANSI_RE.sub("", text)
    text = _BOX_CHARS_RE.sub(" ", text)
    text = " ".join(text.split())
    text = _DROP_CHARS_RE.sub("", text)
    if lang in CJK_LANGUAGES and " " in text:
        out = []
        for i, ch in enumerate(text):
            if ch == " " and 0 < i < len(text) - 1 and _is_cjk(text[i - 1]) and _is_cjk(text[i + 1]):
                continue
            out.append(ch)
        text = "".join(out)
    return text


def is_too_short(text, lang):
    """True for paragraphs of fewer than 3 words or 10 characters; for ja/zh, which do not
    separate words by spaces, fewer than 10 characters."""
    if lang in CJK_LANGUAGES:
        return len(text) < CJK_MIN_CHARS
    return len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS


def _is_cyrillic(ch):
    return 0x0400 <= ord(ch) <= 0x052F


# Languages whose text must contain a letter of their script: a ja/zh/ru/uk paragraph
# without one is an untranslated (English) fallback or code.
_SCRIPT_TESTS = {"ja": _is_cjk, "zh": _is_cjk, "ru": _is_cyrillic, "uk": _is_cyrillic}


def lacks_script(text, lang):
    """True when lang is ja/zh (CJK) or ru/uk (Cyrillic) and text has no letter of that
    script."""
    test = _SCRIPT_TESTS.get(lang)
    return test is not None and not any(test(ch) for ch in text)


def split_for_key(key):
    """train / valid / test for a document key: sha256 of the key, first 8 bytes mod 1000,
    against the SPLIT_PER_MILLE thresholds (90/5/5)."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 1000
    edge = 0
    for split in SPLITS:
        edge += SPLIT_PER_MILLE[split]
        if bucket < edge:
            return split
    return SPLITS[-1]


# ---- LibreOffice help ------------------------------------------------------

class _HelpParser(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
            "param", "source", "track", "wbr"}
    SKIP = {"head", "header", "footer", "aside", "nav", "script", "style", "noscript",
            "title", "button", "template"}
    BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}
    SKIP_CLASSES = {"code", "bascode", "pycode"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []        # open (tag, skips) pairs
        self.skip_depth = 0    # open elements whose content is not text of the page
        self.current = None    # [id, parts, stack depth] of the paragraph being collected
        self.paragraphs = []
        self.seen = set()

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            if tag == "br" and self.current is not None:
                self.current[1].append(" ")
            return
        a = dict(attrs)
        elem_id = a.get("id") or ""
        # Switch blocks carry one hidden variant per system/application; the page script
        # shows the one with the id "default...", which is the text we keep.
        skips = tag in self.SKIP or ("hidden" in a and not elem_id.startswith("default"))
        self.stack.append((tag, skips))
        if skips:
            self.skip_depth += 1
            return
        if (self.current is None and self.skip_depth == 0 and tag in self.BLOCKS and elem_id
                and not elem_id.startswith("bm_")
                and not self.SKIP_CLASSES.intersection((a.get("class") or "").split())):
            self.current = [elem_id, [], len(self.stack)]

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                break
        else:
            return  # stray end tag
        while len(self.stack) > i:
            _, skips = self.stack.pop()
            if skips:
                self.skip_depth -= 1
            if self.current is not None and len(self.stack) < self.current[2]:
                self._finish()

    def handle_data(self, data):
        if self.current is not None and self.skip_depth == 0:
            self.current[1].append(data)

    def _finish(self):
        elem_id, parts, _ = self.current
        self.current = None
        text = normalise_whitespace("".join(parts))
        if text and elem_id not in self.seen:
            self.seen.add(elem_id)
            self.paragraphs.append((elem_id, text))

    def close(self):
        super().close()
        if self.current is not None:
            self._finish()


def parse_help_html(text):
    """Paragraphs of one LibreOffice help page: a list of (element id, text) in document
    order, for every <p>/<h1>..<h6> with an id outside header, footer, navigation and code
    blocks; hidden switch variants other than the default are left out. The first element of
    a repeated id wins."""
    parser = _HelpParser()
    parser.feed(text)
    parser.close()
    return parser.paragraphs


def _help_language_dir(root):
    help_dir = os.path.join(root, "usr", "share", "libreoffice", "help")
    if not os.path.isdir(help_dir):
        raise CorpusError(f"no usr/share/libreoffice/help in {root}")
    dirs = [d for d in sorted(os.listdir(help_dir))
            if os.path.isdir(os.path.join(help_dir, d, "text"))]
    if len(dirs) != 1:
        raise CorpusError(f"expected one language folder with text/ under {help_dir}, found {dirs}")
    return os.path.join(help_dir, dirs[0])


def _walk_files(top):
    """Regular files (not symbolic links) under top, as sorted relative '/' paths."""
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            out.append(os.path.relpath(path, top).replace(os.sep, "/"))
    return sorted(out)


def extract_libreoffice(root):
    """(doc key, paragraph key, sort key, text) records of an extracted libreoffice-help
    package."""
    lang_dir = _help_language_dir(root)
    records = []
    for rel in _walk_files(lang_dir):
        if not rel.endswith(".html"):
            continue
        with open(os.path.join(lang_dir, rel), encoding="utf-8", errors="replace") as f:
            paragraphs = parse_help_html(f.read())
        for order, (elem_id, text) in enumerate(paragraphs):
            records.append(("libreoffice:" + rel, elem_id, (rel, order), text))
    return records


# ---- man pages -------------------------------------------------------------

def clean_rendered_man(text):
    """Removes overstrike (X\\bX, _\\bX) and ANSI/SGR formatting from grotty output."""
    text = _ANSI_RE.sub("", text)
    text = _OVERSTRIKE_RE.sub("", text)
    return text.replace("\x08", "")


def render_man(source, groff="groff", timeout=120):
    """Renders roff source (str or bytes, man or mdoc macros) to plain text with
    `groff -K utf8 -t -Tutf8 -mandoc` (GROFF_ARGS). Raises CorpusError when groff fails."""
    if isinstance(source, str):
        source = source.encode("utf-8")
    env = dict(os.environ, GROFF_NO_SGR="1", LC_ALL="C.UTF-8")
    try:
        proc = subprocess.run([groff] + GROFF_ARGS, input=source, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise CorpusError(f"groff timed out after {timeout} s") from e
    except OSError as e:
        raise CorpusError(f"cannot run {groff}: {e}") from e
    if proc.returncode != 0:
        raise CorpusError(f"groff exit status {proc.returncode}: "
                          f"{proc.stderr.decode('utf-8', 'replace').strip()[:200]}")
    return clean_rendered_man(proc.stdout.decode("utf-8", errors="replace"))


def man_paragraphs(rendered, lang=None):
    """Paragraphs of a rendered page: the lines between the header and the footer line. The
    page is rendered with lines longer than any filled paragraph, so a paragraph is a line."""
    lines = [line for line in rendered.split("\n") if line.strip()]
    out = []
    for line in lines[1:-1]:
        text = normalise_whitespace(line, lang)
        if text and "\ufffd" not in text:
            out.append(text)
    return out


def _read_man_source(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    return data


def _is_so_link(data):
    lines = [l for l in data.split(b"\n") if l.strip() and not l.startswith(b'.\\"')
             and not l.startswith(b"'\\\"")]
    return len(lines) == 1 and lines[0].startswith(b".so ")


def man_page_files(root, english):
    """(page key, path) of the man pages of an extracted package, sorted: pages directly in
    usr/share/man/man<sec>/ for the English package, in usr/share/man/<locale>/man<sec>/
    otherwise. The key is 'man<sec>/<file name without .gz>'."""
    man_dir = os.path.join(root, "usr", "share", "man")
    if not os.path.isdir(man_dir):
        return []
    out = []
    for rel in _walk_files(man_dir):
        parts = rel.split("/")
        if english and len(parts) == 2:
            section, name = parts
        elif not english and len(parts) == 3:
            section, name = parts[1], parts[2]
        else:
            continue
        if not section.startswith("man"):
            continue
        if name.endswith(".gz"):
            name = name[:-3]
        out.append((section + "/" + name, os.path.join(man_dir, rel)))
    return sorted(out)


def extract_manpages(root, lang, jobs=1, groff="groff", warn=None):
    records = []
    pages = []
    for key, path in man_page_files(root, english=(lang == "en")):
        data = _read_man_source(path)
        if _is_so_link(data):
            continue  # an alias of another page
        pages.append((key, data))

    def render(item):
        key, data = item
        try:
            return key, render_man(data, groff=groff), None
        except CorpusError as e:
            return key, None, str(e)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for key, rendered, error in pool.map(render, pages):
            if rendered is None:
                if warn:
                    warn(f"man page {key} ({lang}) skipped: {error}")
                continue
            for order, text in enumerate(man_paragraphs(rendered, lang)):
                records.append(("manpages:" + key, str(order), (key, order), text))
    return records


# ---- fortunes --------------------------------------------------------------

def parse_fortunes(text, lang=None):
    """Entries of a fortune file (entries separated by lines holding only '%'), each
    whitespace-normalised to one line; empty entries are dropped."""
    entries, current = [], []
    for line in text.split("\n"):
        if line.rstrip("\r \t") == "%":
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    out = []
    for entry in entries:
        entry = normalise_whitespace(entry, lang)
        if entry and "\ufffd" not in entry:
            out.append(entry)
    return out


def fortune_files(root, package):
    """(relative path, path) of the fortune data files of an extracted package: regular files
    under usr/share/games/fortunes, without .dat indexes, off/ (offensive) folders and the
    FORTUNE_EXCLUDE files."""
    top = os.path.join(root, "usr", "share", "games", "fortunes")
    if not os.path.isdir(top):
        return []
    exclude = FORTUNE_EXCLUDE.get(package, set())
    out = []
    for rel in _walk_files(top):
        parts = rel.split("/")
        name = parts[-1]
        base = name[:-3] if name.endswith(".u8") else name
        if (name.endswith(".dat") or "off" in parts[:-1] or base in exclude
                or any(s in base for s in FORTUNE_EXCLUDE_SUBSTRINGS)):
            continue
        out.append((rel, os.path.join(top, rel)))
    return out


def extract_fortunes(root, package, lang):
    records = []
    for rel, path in fortune_files(root, package):
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", errors="replace")
        for order, entry in enumerate(parse_fortunes(text, lang)):
            # Fortunes are not translations of one another: each entry is its own document,
            # keyed by its text, so the same text lands in one split in every language.
            doc = "fortunes:" + hashlib.sha256(entry.encode("utf-8")).hexdigest()[:16]
            records.append((doc, f"{package}/{rel}#{order}", (f"{package}/{rel}", order), entry))
    return records


# ---- assembly --------------------------------------------------------------

def collect_package(source, package, lang, root, jobs=1, groff="groff", warn=None):
    """Raw records (doc key, paragraph key, sort key, text) of one extracted package. The
    doc key decides the split; the sort key (a language-independent (file, position) pair)
    the output order."""
    if source == "libreoffice":
        return extract_libreoffice(root)
    if source == "manpages":
        return extract_manpages(root, lang, jobs=jobs, groff=groff, warn=warn)
    if source == "fortunes":
        return extract_fortunes(root, package, lang)
    raise CorpusError(f"unknown source '{source}'")


def assemble(collected, languages, max_per_language=0):
    """Turns the raw records of every package into the corpus.

    collected: list of (source, lang, records, output) with records from collect_package and
    output False for English reference packages. Returns (corpus, stats) where corpus maps
    split -> lang -> list of (key, text) in output order."""
    stats = {name: {lang: 0 for lang in languages}
             for name in ("extracted", "too_short", "identical_to_english", "wrong_script",
                          "duplicate", "over_limit", "kept")}
    per_source = {}
    # English texts by paragraph key (libreoffice) and by document (man pages).
    en_by_key, en_by_doc = {}, {}
    for source, lang, records, _ in collected:
        if lang != "en":
            continue
        for doc, para, _, text in records:
            text = normalise_whitespace(text, lang)
            en_by_key[(source, doc, para)] = text
            en_by_doc.setdefault((source, doc), set()).add(text)

    items = []  # (source index, sort key, doc, para, lang, text)
    for source, lang, records, output in collected:
        if not output or lang not in languages:
            continue
        for doc, para, sort_key, text in records:
            stats["extracted"][lang] += 1
            text = normalise_whitespace(text, lang)
            if is_too_short(text, lang):
                stats["too_short"][lang] += 1
                continue
            if lang != "en":
                if source == "libreoffice" and en_by_key.get((source, doc, para)) == text:
                    stats["identical_to_english"][lang] += 1
                    continue
                if source == "manpages" and text in en_by_doc.get((source, doc), ()):
                    stats["identical_to_english"][lang] += 1
                    continue
            if lacks_script(text, lang):
                stats["wrong_script"][lang] += 1
                continue
            items.append((SOURCES.index(source), sort_key, doc, para, lang, text))
    items.sort()

    kept = {lang: [] for lang in languages}
    seen = {lang: set() for lang in languages}
    for src_index, _, doc, para, lang, text in items:
        if text in seen[lang]:
            stats["duplicate"][lang] += 1
            continue
        seen[lang].add(text)
        kept[lang].append((SOURCES[src_index], doc, para, text))

    corpus = {split: {lang: [] for lang in languages} for split in SPLITS}
    for lang in languages:
        chosen = kept[lang]
        if max_per_language and len(chosen) > max_per_language:
            ranked = sorted(range(len(chosen)), key=lambda i: (
                hashlib.sha256(chosen[i][3].encode("utf-8")).digest(), i))
            keep = set(ranked[:max_per_language])
            stats["over_limit"][lang] = len(chosen) - max_per_language
            chosen = [c for i, c in enumerate(chosen) if i in keep]
        for source, doc, para, text in chosen:
            corpus[split_for_key(doc)][lang].append((f"{doc}#{para}", text))
            per_source.setdefault(source, {}).setdefault(lang, 0)
            per_source[source][lang] += 1
        stats["kept"][lang] = len(chosen)
    stats["kept_by_source"] = {s: dict(sorted(v.items(), key=lambda kv: LANGUAGES.index(kv[0])))
                               for s, v in sorted(per_source.items(),
                                                  key=lambda kv: SOURCES.index(kv[0]))}
    return corpus, stats


def _write_atomic(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_corpus(out, corpus, languages, write_keys=False):
    """Writes <out>/<split>/<lang>.txt (and .keys) and returns the per split/lang counts."""
    files = {}
    for split in SPLITS:
        split_dir = os.path.join(out, split)
        os.makedirs(split_dir, exist_ok=True)
        # Files of languages not built this time would be stale: remove them.
        for lang in LANGUAGES:
            for ext in (".txt", ".keys"):
                stale = os.path.join(split_dir, lang + ext)
                if (lang not in languages or (ext == ".keys" and not write_keys)) \
                        and os.path.exists(stale):
                    os.remove(stale)
        files[split] = {}
        for lang in languages:
            rows = corpus[split][lang]
            data = "".join(text + "\n" for _, text in rows).encode("utf-8")
            _write_atomic(os.path.join(split_dir, lang + ".txt"), data)
            entry = {"lines": len(rows), "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()}
            if write_keys:
                keys = "".join(key.replace("\n", " ") + "\n" for key, _ in rows).encode("utf-8")
                _write_atomic(os.path.join(split_dir, lang + ".keys"), keys)
            files[split][lang] = entry
    return files


def build(inputs, out, languages, sources, max_per_language=0, write_keys=False, jobs=1,
          groff="groff", log=None, warnings=None, tools=None):
    """The whole pipeline after acquisition. inputs: iterable of dicts with name, version,
    source, lang, output (bool), root (an extracted package tree; the iterable may create and
    delete it lazily) and optional deb / deb_sha256. Writes the corpus and manifest.json into
    out and returns the manifest."""
    warnings = list(warnings or [])
    collected, packages = [], []
    for item in inputs:
        records = collect_package(item["source"], item["name"], item["lang"], item["root"],
                                  jobs=jobs, groff=groff, warn=warnings.append)
        collected.append((item["source"], item["lang"], records, item["output"]))
        entry = {"name": item["name"], "version": item["version"], "source": item["source"],
                 "language": item["lang"],
                 "role": "corpus" if item["output"] else "english-reference",
                 "paragraphs_extracted": len(records)}
        for field in ("deb", "deb_sha256"):
            if item.get(field):
                entry[field] = item[field]
        packages.append(entry)
        if log:
            log(item, len(records))
    corpus, stats = assemble(collected, languages, max_per_language)
    os.makedirs(out, exist_ok=True)
    files = write_corpus(out, corpus, languages, write_keys)
    totals = {lang: {"lines": sum(files[s][lang]["lines"] for s in SPLITS),
                     "bytes": sum(files[s][lang]["bytes"] for s in SPLITS)}
              for lang in languages}
    manifest = {
        "format": FORMAT,
        "languages": languages,
        "splits": files,
        "totals": totals,
        "paragraphs_by_source": stats.pop("kept_by_source"),
        "filtering": stats,
        "packages": packages,
        "warnings": warnings,
        "tools": tools or {},
        "options": {
            "languages": languages,
            "sources": sources,
            "max_paragraphs_per_language": max_per_language,
            "keys": write_keys,
            "split": {"rule": "sha256(document key)[:8] mod 1000 against per-mille thresholds",
                      "per_mille": SPLIT_PER_MILLE},
            "min_words": MIN_WORDS, "min_chars": MIN_CHARS, "cjk_min_chars": CJK_MIN_CHARS,
            "groff_args": GROFF_ARGS,
        },
    }
    data = (json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=True) + "\n")
    _write_atomic(os.path.join(out, "manifest.json"), data.encode("utf-8"))
    return manifest


# ---- package acquisition ---------------------------------------------------

def _run(cmd, cwd=None):
    try:
        return subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              check=False)
    except OSError as e:
        raise CorpusError(f"cannot run {cmd[0]}: {e}") from e


def apt_candidate(name):
    """The candidate version of a package per `apt-cache policy`, or None."""
    proc = _run(["apt-cache", "policy", name])
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("Candidate:"):
            version = line.split(":", 1)[1].strip()
            return None if version in ("", "(none)") else version
    return None


def deb_fields(path):
    proc = _run(["dpkg-deb", "-f", path, "Package", "Version"])
    if proc.returncode != 0:
        raise CorpusError(f"dpkg-deb cannot read {path}: "
                          f"{proc.stderr.decode('utf-8', 'replace').strip()}")
    fields = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            fields[key.strip()] = value.strip()
    return fields.get("Package"), fields.get("Version")


def _compare_versions(a, b):
    if a == b:
        return 0
    return -1 if _run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0 else 1


def cached_debs(cache, name):
    """{version: path} of the .deb files of a package in the cache."""
    out = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(cache), glob.escape(name) + "_*.deb"))):
        package, version = deb_fields(path)
        if package == name and version:
            out[version] = path
    return out


class Acquirer:
    """Finds each package's .deb in the cache or downloads it with apt-get download."""

    def __init__(self, cache, say):
        self.cache = cache
        self.say = say
        self.updated = False

    def _download(self, name, version):
        cmd = ["apt-get", "download", "-q", f"{name}={version}"]
        proc = _run(cmd, cwd=self.cache)
        if proc.returncode != 0 and not self.updated:
            # Most download failures are missing or stale package lists.
            self.say(f"apt-get download {name} failed; running apt-get update")
            self.updated = True
            upd = _run(["apt-get", "update", "-q"])
            if upd.returncode != 0:
                raise CorpusError("apt-get update failed (run as root?): "
                                  + upd.stderr.decode("utf-8", "replace").strip()[-400:])
            version = apt_candidate(name) or version
            proc = _run(["apt-get", "download", "-q", f"{name}={version}"], cwd=self.cache)
        if proc.returncode != 0:
            raise CorpusError(f"apt-get download {name}={version} failed: "
                              + proc.stderr.decode("utf-8", "replace").strip()[-400:])
        return version

    def get(self, name):
        """(path, version, warning or None); path None when the package is to be skipped."""
        candidate = apt_candidate(name)
        cached = cached_debs(self.cache, name)
        if candidate is None:
            if not cached:
                return None, None, (f"package {name} does not exist in the apt lists "
                                    "(not in Debian 12?); skipped")
            version = sorted(cached, key=functools.cmp_to_key(_compare_versions))[-1]
            return cached[version], version, (f"package {name} not in the apt lists; "
                                              f"using the cached {version}")
        if candidate in cached:
            return cached[candidate], candidate, None
        self.say(f"downloading {name} {candidate}")
        try:
            version = self._download(name, candidate)
        except CorpusError:
            if cached:  # offline: fall back to what is there
                version = sorted(cached, key=functools.cmp_to_key(_compare_versions))[-1]
                return cached[version], version, (f"package {name}: download of {candidate} "
                                                  f"failed; using the cached {version}")
            raise
        cached = cached_debs(self.cache, name)
        if version not in cached:
            raise CorpusError(f"apt-get download {name} left no {name}_*.deb of version "
                              f"{version} in {self.cache}")
        return cached[version], version, None


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan_packages(languages, sources):
    """(source, package, lang, output) in processing order. An English package is also
    processed, as the reference for dropping untranslated paragraphs, when another language
    of its source (libreoffice, manpages) is requested."""
    plan = []
    for source in sources:
        wanted = [(p, l) for p, l in PACKAGES[source] if l in languages]
        needs_reference = source in ("libreoffice", "manpages") and any(l != "en" for _, l in wanted)
        for package, lang in PACKAGES[source]:
            if lang in languages:
                plan.append((source, package, lang, True))
            elif lang == "en" and needs_reference:
                plan.append((source, package, lang, False))
    return plan


def _tool_version(cmd):
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    except OSError:
        return None
    lines = proc.stdout.decode("utf-8", "replace").splitlines()
    return lines[0].strip() if lines else None


def _parse_list(value, allowed, what):
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise CorpusError(f"--{what} is empty (allowed: {','.join(allowed)})")
    bad = [v for v in items if v not in allowed]
    if bad:
        raise CorpusError(f"unknown {what[:-1]} '{bad[0]}' (allowed: {','.join(allowed)})")
    return [v for v in allowed if v in items]  # canonical order, no repeats


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="build_corpus.py",
        description="Build the multilingual plain-text corpus (LibreOffice help, man pages, "
                    "fortunes) from Debian packages into <out>/<split>/<lang>.txt and "
                    "<out>/manifest.json.")
    parser.add_argument("--out", default="data/corpus", help="output folder (default data/corpus)")
    parser.add_argument("--cache", default="data/debs",
                        help="folder of downloaded .deb files (default data/debs)")
    parser.add_argument("--languages", default=",".join(LANGUAGES),
                        help="comma-separated output languages (default all: %(default)s)")
    parser.add_argument("--sources", default=",".join(SOURCES),
                        help="comma-separated sources (default all: %(default)s)")
    parser.add_argument("--max-paragraphs-per-language", type=int, default=0, metavar="N",
                        help="keep at most N paragraphs per language, chosen by text hash "
                             "(0 = all)")
    parser.add_argument("--keys", action="store_true",
                        help="also write <split>/<lang>.keys: the paragraph key of each line")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="parallel groff renderings (default: the number of cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    def say(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    start = time.monotonic()
    # SIGTERM (kill, a job runner's timeout, or xmoe passing its own on) stops the build like
    # Ctrl-C: temporary folders are removed and no output file is left half-written.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        languages = _parse_list(args.languages, LANGUAGES, "languages")
        sources = _parse_list(args.sources, SOURCES, "sources")
        if args.max_paragraphs_per_language < 0:
            raise CorpusError("--max-paragraphs-per-language must be >= 0")
        if args.jobs < 1:
            raise CorpusError("--jobs must be >= 1")
        needed = ["dpkg-deb", "dpkg", "apt-cache", "apt-get"]
        if "manpages" in sources:
            needed.append("groff")
        missing = [t for t in needed if shutil.which(t) is None]
        if missing:
            raise CorpusError(f"missing tools: {', '.join(missing)} "
                              "(Debian packages dpkg, apt, groff-base)")
        os.makedirs(args.cache, exist_ok=True)
        plan = plan_packages(languages, sources)
        acquirer = Acquirer(args.cache, say)
        warnings = []
        total = len(plan)
        counter = {"i": 0}

        def inputs():
            for source, package, lang, output in plan:
                path, version, warning = acquirer.get(package)
                if warning:
                    warnings.append(warning)
                    say("warning: " + warning)
                if path is None:
                    counter["i"] += 1
                    say(f"[{counter['i']}/{total}] {package}: skipped")
                    continue
                with tempfile.TemporaryDirectory(prefix="xmoe-corpus-") as tmp:
                    proc = _run(["dpkg-deb", "-x", path, tmp])
                    if proc.returncode != 0:
                        raise CorpusError(f"dpkg-deb -x {path} failed: "
                                          + proc.stderr.decode("utf-8", "replace").strip())
                    yield {"name": package, "version": version, "source": source,
                           "lang": lang, "output": output, "root": tmp,
                           "deb": os.path.basename(path), "deb_sha256": _sha256_file(path)}

        def log(item, n):
            counter["i"] += 1
            role = "" if item["output"] else " (English reference)"
            say(f"[{counter['i']}/{total}] {item['name']}: {n} paragraphs{role}")

        tools = {"groff": _tool_version(["groff", "--version"])} if "manpages" in sources else {}
        manifest = build(inputs(), args.out, languages, sources,
                         max_per_language=args.max_paragraphs_per_language,
                         write_keys=args.keys, jobs=args.jobs, log=log, warnings=warnings,
                         tools=tools)
    except CorpusError as e:
        print(f"build_corpus.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # an output or cache path that is a file, or not writable
        print(f"build_corpus.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("build_corpus.py: interrupted", file=sys.stderr)
        return 130
    for lang in manifest["languages"]:
        counts = "  ".join(f"{s} {manifest['splits'][s][lang]['lines']}" for s in SPLITS)
        say(f"{lang}: {manifest['totals'][lang]['lines']} paragraphs, "
            f"{manifest['totals'][lang]['bytes']} bytes ({counts})")
    empty = [lang for lang in manifest["languages"] if manifest["totals"][lang]["lines"] == 0]
    if empty:
        print(f"build_corpus.py: warning: no paragraphs in {', '.join(empty)} from the sources "
              f"{', '.join(sources)}; pre-training refuses a language without text",
              file=sys.stderr)
    say(f"wrote {args.out} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
