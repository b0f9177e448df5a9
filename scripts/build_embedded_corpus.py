"""Regenerate ``modelmap/corpus/data/embedded_documents.jsonl.gz`` from offline sources.

The embedded default corpus is real text from seven domains, taken from Debian packages and one
PyPI wheel that the development machines can reach without the open internet. Every step is
deterministic (pinned package versions, sorted inputs, hash-based selection, gzip mtime=0), so
running this script twice, on any machine, writes the same bytes.

Usage::

    .venv/bin/python scripts/build_embedded_corpus.py --fetch --src /tmp/modelmap-sources

``--fetch`` downloads the pinned packages into ``--src`` (``apt-get download`` +
``dpkg-deb -x``, no install; ``pip download gensim --no-deps``); without it the script expects
them unpacked there already. The bible text needs the ``bible`` program of ``bible-kjv`` (run
from the unpacked package, it only links libc and readline) to decompress its data file.

Output: one JSON object per line, ``{"doc_id", "domain", "source", "text"}``, ordered by domain
(``DOMAINS`` order) and then by each source's natural order (book/chapter, headword, file path).
Which documents go to the scored corpus and which to model training is decided at load time
from ``doc_id`` (``modelmap.corpus.build.doc_split``), not stored here.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import html
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Pinned sources: (Debian package, version). Bookworm versions as fetched on 2025-11 machines.
DEB_PACKAGES: dict[str, str] = {
    "bible-kjv-text": "4.38",
    "bible-kjv": "4.38",
    "dict-devil": "1.0-13.1",
    "dict-jargon": "4.4.7-3.1",
    "fortunes": "1:1.99.1-7.3",
    "python3.11-doc": "3.11.2-6+deb12u9",
    "libpython3.11-stdlib": "3.11.2-6+deb12u9",
}
GENSIM_VERSION = "4.4.0"
GENSIM_WIKI = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)

# Per-domain budget of UTF-8 text bytes. About 1.5 MB each so that each half (corpus / train)
# gets ~750 KB per domain: ~4,000+ scoreable 1-KB chunks in the corpus split over 7 domains.
DOMAIN_CAP_BYTES = 1_500_000
# Long files (big rst pages, big modules) are cut at a line boundary so that one file cannot
# eat a domain's budget; documents too short to give one >256-byte chunk are dropped.
MAX_DOC_BYTES = 16_000
MIN_DOC_BYTES = 300
# Short entries (dictionary headwords, fortunes) are grouped into documents of about this size.
GROUP_BYTES = 4_000

DOMAINS = ("bible", "devil", "jargon", "fortunes", "python_docs", "python_code", "wikipedia")
OUT_PATH = Path(__file__).resolve().parents[1] / "modelmap" / "data" / "embedded_documents.jsonl.gz"


@dataclass(frozen=True)
class Doc:
    """One document: ``doc_id`` is unique and starts with ``domain + '/'``."""

    doc_id: str
    domain: str
    source: str
    text: str


# ---------------------------------------------------------------- fetching


def fetch(src: Path) -> None:
    """Download and unpack the pinned packages into ``src/<package>/`` (idempotent)."""
    src.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    for pkg, version in DEB_PACKAGES.items():
        dest = src / pkg
        if dest.exists():
            continue
        for old in src.glob(f"{pkg}_*.deb"):
            old.unlink()
        subprocess.run(["apt-get", "download", f"{pkg}={version}"], cwd=src, check=True)
        (deb,) = src.glob(f"{pkg}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    wheel_dir = src / "gensim"
    if not wheel_dir.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"gensim=={GENSIM_VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheel_dir),
            ],
            check=True,
        )


def check_versions(src: Path) -> None:
    """Fail unless the unpacked .deb files are the pinned versions (output depends on them)."""
    for pkg, version in DEB_PACKAGES.items():
        debs = sorted(src.glob(f"{pkg}_*.deb"))
        if not debs:
            raise SystemExit(f"{src}: no {pkg}_*.deb; run with --fetch")
        got = subprocess.run(
            ["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        if got != version:
            raise SystemExit(f"{debs[0]}: version {got}, expected {version} (update the pins)")


# ---------------------------------------------------------------- text clean-up


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def clean(text: str) -> str:
    """Normalise newlines, drop overstrike (``x\\bx``) and control bytes, trim line ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r".\x08", "", text)  # fortune files bold/underline by overstriking
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def truncate_lines(text: str, max_bytes: int = MAX_DOC_BYTES) -> str:
    """Cut ``text`` to at most ``max_bytes`` UTF-8 bytes at the last newline before the cap."""
    raw = text.encode("utf-8")
    if len(raw) <= max_bytes:
        return text
    cut = raw.rfind(b"\n", 0, max_bytes)
    if cut <= 0:
        cut = max_bytes
    return raw[:cut].decode("utf-8", errors="ignore").rstrip()


def group_entries(entries: list[str], target: int = GROUP_BYTES) -> list[str]:
    """Join consecutive short entries with blank lines into pieces of about ``target`` bytes."""
    groups: list[str] = []
    current: list[str] = []
    size = 0
    for entry in entries:
        current.append(entry)
        size += len(entry.encode("utf-8")) + 2
        if size >= target:
            groups.append("\n\n".join(current))
            current, size = [], 0
    if current:
        groups.append("\n\n".join(current))
    return groups


# ---------------------------------------------------------------- per-source readers


def read_bible(src: Path) -> Iterator[Doc]:
    """King James Bible, one chapter per document, one verse per line ("N text")."""
    binary = src / "bible-kjv" / "usr" / "bin" / "bible"
    data_dir = src / "bible-kjv-text" / "usr" / "lib"
    out = subprocess.run(
        [str(binary), "-f", "-p", str(data_dir), "Gen1:1-Rev22:21"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    chapters: dict[str, list[str]] = {}
    for line in out.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            continue
        book, chap, verse, text = m.groups()
        chapters.setdefault(f"{book}{chap}", []).append(f"{verse} {text}")
    for key, verses in chapters.items():  # dict keeps canonical book/chapter order
        yield Doc(f"bible/{key}", "bible", "bible-kjv-text", "\n".join(verses))


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dictd_number(s: str) -> int:
    """Decode dictd's base-64 numerals (offsets and lengths in ``.index`` files)."""
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


def read_dictd(src: Path, pkg: str, name: str, domain: str) -> Iterator[Doc]:
    """A dictd dictionary: consecutive entries grouped into ~4-KB documents."""
    base = src / pkg / "usr" / "share" / "dictd"
    body = gzip.decompress((base / f"{name}.dict.dz").read_bytes())
    spans = []
    for line in (base / f"{name}.index").read_text(encoding="utf-8").splitlines():
        head, off, length = line.split("\t")[:3]
        if head.startswith("00database") or head.startswith("00-database"):
            continue
        spans.append((_dictd_number(off), _dictd_number(length)))
    entries = []
    for off, length in sorted(set(spans)):  # file order; several headwords can share an entry
        text = body[off : off + length].decode("utf-8", errors="replace")
        text = re.sub(r"\{\s*([^{}]*?)\s*\}", r"\1", text)  # jargon's {cross-reference} braces
        entries.append(clean(text))
    for i, group in enumerate(group_entries(entries)):
        yield Doc(f"{domain}/{i:04d}", domain, pkg, group)


# The fortunes package's files; ascii-art and translate-me are pictures / non-English.
_FORTUNE_SKIP = {"ascii-art", "translate-me"}


def read_fortunes(src: Path) -> Iterator[Doc]:
    """BSD fortune files: consecutive fortunes of one file grouped into ~4-KB documents."""
    base = src / "fortunes" / "usr" / "share" / "games" / "fortunes"
    for path in sorted(base.iterdir()):
        if path.suffix == ".dat" or path.name in _FORTUNE_SKIP or path.is_symlink():
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        items = [clean(x) for x in re.split(r"^%$", raw, flags=re.M)]
        items = [x for x in items if x]
        for i, group in enumerate(group_entries(items)):
            yield Doc(f"fortunes/{path.name}/{i:03d}", "fortunes", "fortunes", group)


def _strip_rst(text: str) -> str:
    """Drop reST lines that are pure markup (labels, index directives and their bodies)."""
    out: list[str] = []
    skipping = False
    for line in text.split("\n"):
        if re.match(r"^\.\. (_[^:]+:|index::)", line):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or line.startswith("\t")):
            continue
        skipping = False
        out.append(line)
    return "\n".join(out)


def read_python_docs(src: Path) -> Iterator[Doc]:
    """Python 3.11 documentation sources (``_sources/**/*.rst.txt``), one file per document."""
    base = src / "python3.11-doc" / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources"
    for path in sorted(base.rglob("*.rst.txt")):
        rel = path.relative_to(base).as_posix()
        if rel.startswith("whatsnew/changelog"):  # a huge bullet list of issue numbers
            continue
        text = clean(_strip_rst(path.read_text(encoding="utf-8", errors="replace")))
        yield Doc(f"python_docs/{rel}", "python_docs", "python3.11-doc", truncate_lines(text))


# Tests and generated tables (codec maps, pydoc topics) are not representative source code.
_CODE_SKIP = re.compile(r"(^|/)(test|tests|idle_test|encodings|pydoc_data|ensurepip)(/|$)")


def read_python_code(src: Path) -> Iterator[Doc]:
    """Python 3.11 standard library ``*.py`` files, one file per document."""
    base = src / "libpython3.11-stdlib" / "usr" / "lib" / "python3.11"
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base).as_posix()
        # symlinks point into other packages (sysconfig data): not in this one, skip them
        if _CODE_SKIP.search(rel) or "site-packages" in rel or path.is_symlink():
            continue
        text = clean(path.read_text(encoding="utf-8", errors="replace"))
        yield Doc(f"python_code/{rel}", "python_code", "libpython3.11-stdlib", truncate_lines(text))


def _remove_nested(text: str, open_tok: str, close_tok: str) -> str:
    """Remove balanced ``open_tok ... close_tok`` spans (wiki templates, tables), nesting ok."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(text):
        if text.startswith(open_tok, i):
            depth += 1
            i += len(open_tok)
        elif depth and text.startswith(close_tok, i):
            depth -= 1
            i += len(close_tok)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def strip_wikitext(text: str) -> str:
    """Cheap MediaWiki markup removal: templates, tables, refs, files, link syntax, emphasis."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    # [[File:...]] / [[Image:...]] / [[Category:...]] / interwiki links, with nested links inside
    text = re.sub(
        r"\[\[(?:File|Image|Category|[a-z\-]{2,12}):(?:[^\[\]]|\[\[[^\[\]]*\]\])*\]\]", "", text
    )
    text = re.sub(r"\[\[[^\[\]|]*\|([^\[\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[\[([^\[\]]*)\]\]", r"\1", text)
    text = re.sub(r"\[https?://\S+ ([^\]]*)\]", r"\1", text)
    text = re.sub(r"\[https?://[^\]]*\]", "", text)
    text = re.sub(r"'{2,}", "", text)
    text = re.sub(r"^(=+)\s*(.*?)\s*\1\s*$", r"\2", text, flags=re.M)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    # parentheses emptied by removed templates (pronunciations, dates): "Andorra (; , )"
    text = re.sub(r" ?\((?:[;,]\s*)*\)", "", text)
    lines = []
    for line in text.split("\n"):
        if line.startswith(("|", "!", "}", "{")):  # table residue
            continue
        lines.append(re.sub(r"^[*#:;]+\s*", "", line))
    return clean("\n".join(lines))


_SECTION_TAIL = re.compile(r"\n(See also|References|External links|Notes|Further reading)\n")


def read_wikipedia(src: Path) -> Iterator[Doc]:
    """English Wikipedia articles from gensim's test dump, markup stripped, one per document."""
    wheels = sorted((src / "gensim").glob(f"gensim-{GENSIM_VERSION}-*.whl"))
    if not wheels:
        raise SystemExit(f"{src / 'gensim'}: no gensim-{GENSIM_VERSION} wheel; run with --fetch")
    import zipfile

    with zipfile.ZipFile(wheels[0]) as zf:
        xml_bytes = bz2.decompress(zf.read(GENSIM_WIKI))
    ns = "{http://www.mediawiki.org/xml/export-0.10/}"
    for _, elem in ET.iterparse(io.BytesIO(xml_bytes)):
        if elem.tag != ns + "page":
            continue
        title = elem.findtext(ns + "title") or ""
        namespace = elem.findtext(ns + "ns")
        raw = elem.findtext(f"{ns}revision/{ns}text") or ""
        elem.clear()
        if namespace != "0" or raw.lstrip().upper().startswith("#REDIRECT"):
            continue
        body = strip_wikitext(raw)
        body = _SECTION_TAIL.split(body, maxsplit=1)[0]  # drop reference-list tails
        yield Doc(
            f"wikipedia/{title}",
            "wikipedia",
            f"gensim-{GENSIM_VERSION}",
            truncate_lines(f"{title}\n\n{body}"),
        )


READERS: dict[str, Callable[[Path], Iterator[Doc]]] = {
    "bible": read_bible,
    "devil": lambda src: read_dictd(src, "dict-devil", "devil", "devil"),
    "jargon": lambda src: read_dictd(src, "dict-jargon", "jargon", "jargon"),
    "fortunes": read_fortunes,
    "python_docs": read_python_docs,
    "python_code": read_python_code,
    "wikipedia": read_wikipedia,
}


# ---------------------------------------------------------------- selection and output


def _rank(doc_id: str) -> str:
    return hashlib.sha256(("select:" + doc_id).encode("utf-8")).hexdigest()


def select_capped(docs: list[Doc], cap: int = DOMAIN_CAP_BYTES) -> list[Doc]:
    """Pick documents in a hash order until ``cap`` bytes, then restore source order.

    A hash order rather than a prefix, so a capped domain still spans all of its source
    (every Bible book, every doc section) instead of only its first files.
    """
    docs = [d for d in docs if len(d.text.encode("utf-8")) >= MIN_DOC_BYTES]
    chosen: set[str] = set()
    total = 0
    for doc in sorted(docs, key=lambda d: _rank(d.doc_id)):
        if total >= cap:
            break
        chosen.add(doc.doc_id)
        total += len(doc.text.encode("utf-8"))
    return [d for d in docs if d.doc_id in chosen]


def build(src: Path) -> list[Doc]:
    """All selected documents, in ``DOMAINS`` order and source order within a domain."""
    out: list[Doc] = []
    for domain in DOMAINS:
        docs = list(READERS[domain](src))
        ids = [d.doc_id for d in docs]
        if len(set(ids)) != len(ids):
            raise SystemExit(f"{domain}: duplicate doc_id")
        picked = select_capped(docs)
        size = sum(len(d.text.encode("utf-8")) for d in picked)
        print(f"{domain:12s} {len(picked):5d}/{len(docs):5d} docs {size / 1e3:8.1f} KB")
        out.extend(picked)
    return out


def write_jsonl_gz(docs: list[Doc], path: Path) -> bytes:
    """Write gzip'd JSONL with a fixed header (mtime=0, no file name) so bytes are stable."""
    lines = [
        json.dumps(
            {"doc_id": d.doc_id, "domain": d.domain, "source": d.source, "text": d.text},
            ensure_ascii=False,
            sort_keys=False,
        )
        for d in docs
    ]
    payload = ("\n".join(lines) + "\n").encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=Path("/tmp/modelmap-sources"))
    parser.add_argument("--out", type=Path, default=OUT_PATH)
    parser.add_argument("--fetch", action="store_true", help="download the pinned packages")
    args = parser.parse_args(argv)
    if args.fetch:
        fetch(args.src)
    check_versions(args.src)
    docs = build(args.src)
    data = write_jsonl_gz(docs, args.out)
    print(
        f"{args.out}: {len(docs)} documents, {len(data)} bytes gz, "
        f"sha256 {hashlib.sha256(data).hexdigest()}"
    )


if __name__ == "__main__":
    main()
