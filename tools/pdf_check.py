"""Check the book's PDF (``make pdf``): every page of the table of contents is in it, with its
figures, numbered definitions and theorems, and the bibliography.

Usage::

    python tools/pdf_check.py _build/latex/book.pdf [--toc _toc.yml] [--tex _build/latex/book.tex]

The text comes from ``pdftotext`` (Debian's ``poppler-utils``). The checks:

* the title (first ``# `` heading) of every file in ``_toc.yml`` appears in the text;
* no unresolved reference (``??``) is left;
* every numbered figure of the LaTeX source (``\\caption``) has a "Fig. N" caption in the text, and
  there is an image for each;
* every ``prf:definition`` / ``prf:theorem`` of the chapters comes out numbered
  ("Definition 3.1");
* the bibliography is there, labelled author–year.

Exit status 1 with one line per failure, 0 with a summary.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence


def toc_files(toc: Path) -> List[str]:
    """The ``file:`` entries of a Jupyter Book ``_toc.yml``, root first, in order.

    >>> import tempfile, os
    >>> d = tempfile.mkdtemp(); p = Path(d) / "_toc.yml"
    >>> _ = p.write_text("format: jb-book\\nroot: intro\\nparts:\\n  - chapters:\\n      - file: a/b\\n")
    >>> toc_files(p)
    ['intro', 'a/b']
    """
    text = toc.read_text()
    root = re.search(r"^root:\s*(\S+)", text, re.MULTILINE)
    files = re.findall(r"^\s*-?\s*file:\s*(\S+)", text, re.MULTILINE)
    return ([root.group(1)] if root else []) + files


def title_of(path: Path) -> Optional[str]:
    """The first level-1 heading of a Markdown file or a notebook's Markdown cells."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    else:
        text = path.read_text()
    m = re.search(r"^#\s+(.+?)\s*$", text, re.MULTILINE)
    return m.group(1) if m else None


def plain(text: str) -> str:
    """Text with Markdown emphasis and code marks removed and whitespace collapsed.

    >>> plain("The *noise*  scale: `εN/B`\\n sets it")
    'The noise scale: εN/B sets it'
    """
    text = re.sub(r"[*_`]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def find_source(root: Path, name: str) -> Optional[Path]:
    for suffix in (".md", ".ipynb"):
        if (root / (name + suffix)).exists():
            return root / (name + suffix)
    return None


def check(pdf: Path, toc: Path, tex: Optional[Path], source_root: Path) -> List[str]:
    """Every failure, as one line each."""
    failures: List[str] = []
    if not pdf.exists():
        return [f"{pdf} does not exist"]
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(pdf), "-"], check=True,
                          capture_output=True, text=True).stdout
    flat = plain(text.replace("\u00ad", "").replace("-\n", "-"))
    titles: Dict[str, str] = {}
    for name in toc_files(toc):
        src = find_source(source_root, name)
        if src is None:
            failures.append(f"{name}: not found under {source_root}")
            continue
        title = title_of(src)
        if title is None:
            failures.append(f"{name}: has no '# ' title")
            continue
        titles[name] = plain(title)
        if titles[name] not in flat:
            failures.append(f"{name}: title {titles[name]!r} is not in the PDF")
    if "??" in text:
        n = text.count("??")
        failures.append(f"{n} unresolved reference(s) ('??') in the PDF")
    if tex is not None and tex.exists():
        latex = tex.read_text()
        n_captions = len(re.findall(r"\\caption\{", latex))
        n_fig = len(set(re.findall(r"Fig\. ?\d+(?:\.\d+)*", flat)))
        if n_fig < n_captions:
            failures.append(f"{n_captions} figure caption(s) in the LaTeX, {n_fig} 'Fig. N' in the PDF")
        n_images = len(re.findall(r"\\(?:sphinx)?includegraphics", latex))
        if n_captions and n_images < n_captions:
            failures.append(f"{n_captions} figure(s) but {n_images} image(s) in the LaTeX")
    for kind in ("definition", "theorem"):
        declared = 0
        for src in sorted(source_root.glob("chapters/*.ipynb")):
            declared += len(re.findall(r"\{prf:" + kind + r"\}", src.read_text()))
        numbered = len(set(re.findall(kind.capitalize() + r" \d+\.\d+", flat)))
        if declared and numbered == 0:
            failures.append(f"{declared} prf:{kind} block(s) in the chapters, none numbered in the PDF")
    if not re.search(r"Bibliography", flat):
        failures.append("no Bibliography in the PDF")
    elif not re.search(r"\[[A-Z][^\]]*, (19|20)\d\d[a-z]?\]", flat):
        failures.append("the bibliography is not labelled author–year ('[Name et al., 2017]')")
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pdf", type=Path)
    parser.add_argument("--toc", type=Path, default=Path("_toc.yml"))
    parser.add_argument("--tex", type=Path, default=None, help="the LaTeX source (default: beside the PDF)")
    parser.add_argument("--source", type=Path, default=None,
                        help="the staged book source with the executed chapters (default: the TOC's folder)")
    args = parser.parse_args(argv)
    tex = args.tex or args.pdf.with_suffix(".tex")
    failures = check(args.pdf, args.toc, tex, args.source or args.toc.parent)
    for f in failures:
        print(f"pdf check: {f}")
    if failures:
        return 1
    print(f"pdf check: {args.pdf}: every page of {args.toc} is in it, with numbered figures, "
          "definitions and theorems and an author–year bibliography")
    return 0


if __name__ == "__main__":
    sys.exit(main())
