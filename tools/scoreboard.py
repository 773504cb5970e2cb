"""Build the book's scoreboard: every claim of every chapter in one table.

Each executed chapter writes its claims to ``<claims dir>/<chapter>.json``
(:func:`flatness.claims.write_claims`). This script reads the committed page (``scoreboard.md``,
a stub with the reading guide and a marker line), replaces the marker with the table of every
claim of every chapter listed in ``_toc.yml``, in the book's order, and writes the result into the
staged book source, which sphinx then builds. The committed page is never changed.

A chapter without a claims file is an error (exit status 1, a message naming the chapters and
how to produce their files); ``--no-strict`` lists such chapters on the page instead, until every
chapter writes its claims.

Usage (``make html`` runs it)::

    python tools/scoreboard.py --claims _build/claims/quick --mode quick \\
        --page scoreboard.md --out _build/source-quick/scoreboard.md [--toc _toc.yml] [--no-strict]
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from the repository: import the library beside it
    sys.path.insert(0, str(ROOT))

from flatness.claims import OUTCOMES, Claim, read_claims  # noqa: E402
from flatness.tables import markdown_table  # noqa: E402

MARKER = "<!-- scoreboard-table -->"


class ScoreboardError(RuntimeError):
    """The scoreboard cannot be built (a missing or malformed claims file, a bad page)."""


class MissingClaimsError(ScoreboardError):
    """Chapters without a claims file.

    Attributes:
        missing: the chapters' file stems.
    """

    def __init__(self, missing: Sequence[str], directory: Path):
        self.missing = list(missing)
        names = ", ".join(self.missing)
        super().__init__(
            f"scoreboard: no claims file for {len(self.missing)} chapter(s): {names} "
            f"(expected {directory}/<chapter>.json). Each chapter must end with "
            f"flatness.claims.write_claims(claims, '<chapter>', quick=QUICK); re-execute those "
            f"chapters (delete their executed copies under _build/executed/ and run make again), "
            f"or build with SCOREBOARD_STRICT=0 to list them as missing.")


def _load_yaml(path: Path):
    import yaml  # the book's stack (jupyter-book) brings PyYAML

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def toc_files(toc: dict) -> List[str]:
    """Every ``file:`` entry of a jupyter-book table of contents, in order (root first)."""
    out: List[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(str(node["file"]))
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    if not isinstance(toc, dict):
        raise ScoreboardError("toc: expected a mapping (a jupyter-book _toc.yml)")
    if "root" in toc:
        out.append(str(toc["root"]))
    walk(toc)
    return out


def toc_chapters(toc_path: Path, root: Optional[Path] = None) -> List[str]:
    """The file stems of the chapter notebooks (``chapters/*.ipynb``) in ``_toc.yml``, in order.

    Args:
        toc_path: the table of contents.
        root: the book's source directory (default: the directory of ``toc_path``).

    Returns:
        The stems, e.g. ``["01_measuring_flatness", "02_large_batch", ...]``.

    Raises:
        ScoreboardError: a toc entry under ``chapters/`` without a notebook.
    """
    toc_path = Path(toc_path)
    root = Path(root) if root is not None else toc_path.parent
    stems = []
    for entry in toc_files(_load_yaml(toc_path)):
        path = Path(entry)
        if path.parts[:1] != ("chapters",):
            continue
        nb = root / path.with_suffix(".ipynb")
        if nb.exists():
            stems.append(path.with_suffix("").name)
        elif not (root / path.with_suffix(".md")).exists():
            raise ScoreboardError(f"toc: {entry} is listed in {toc_path} but {nb} does not exist")
    return stems


def _plain(heading: str) -> str:
    """A heading's text as docutils sees it (math and emphasis markers dropped)."""
    for ch in "$`*":
        heading = heading.replace(ch, "")
    return heading.strip()


def section_anchor(heading: str) -> str:
    """The HTML id sphinx gives a section with this heading (docutils' ``make_id``).

    >>> section_anchor("Keskar et al.'s comparison: SB against LB")
    'keskar-et-al-s-comparison-sb-against-lb'
    >>> section_anchor("$K-1$ layers at once")
    'k-1-layers-at-once'
    """
    from docutils.nodes import make_id

    return make_id(_plain(heading))


def chapter_headings(notebook: Path) -> List[str]:
    """The Markdown headings of a notebook (``#`` to ``######``), outside code fences, in order."""
    with open(notebook, encoding="utf-8") as f:
        nb = json.load(f)
    heads = []
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        fenced = False
        for line in source.splitlines():
            if line.lstrip().startswith(("```", "~~~")):
                fenced = not fenced
            elif not fenced and line.startswith("#"):
                text = line.lstrip("#")
                if text.startswith(" ") and len(line) - len(text) <= 6:
                    heads.append(text.strip())
    return heads


def gather(claims_dir: Path, chapters: Sequence[str], mode: Optional[str] = None,
           strict: bool = True) -> Tuple[List[Claim], List[str]]:
    """Every claim of every chapter, in the chapters' order.

    Args:
        claims_dir: the directory of one mode's claims files.
        chapters: the chapters' file stems, in the book's order.
        mode: ``"quick"`` or ``"full"``: every file must have been written in that mode.
        strict: raise when a chapter has no claims file (else return it as missing).

    Returns:
        ``(claims, missing)``: the claims and the chapters without a file.

    Raises:
        MissingClaimsError: ``strict`` and a chapter without a claims file.
        ScoreboardError: a malformed file, one of another chapter, or of another mode.
    """
    claims_dir = Path(claims_dir)
    claims: List[Claim] = []
    missing: List[str] = []
    for chapter in chapters:
        path = claims_dir / f"{chapter}.json"
        if not path.exists():
            missing.append(chapter)
            continue
        try:
            found = read_claims(path)
        except (ValueError, TypeError) as e:
            raise ScoreboardError(f"scoreboard: {path}: {e}") from None
        if found.chapter != chapter:
            raise ScoreboardError(f"scoreboard: {path} holds the claims of {found.chapter!r}")
        if mode is not None and found.mode != mode:
            raise ScoreboardError(f"scoreboard: {path} was written in {found.mode} mode, "
                                  f"the book is built in {mode} mode")
        if not found.claims:
            raise ScoreboardError(f"scoreboard: {path} holds no claims")
        claims.extend(found.claims)
    if strict and missing:
        raise MissingClaimsError(missing, claims_dir)
    return claims, missing


def _where(claim: Claim, headings: Dict[str, List[str]], strict: bool) -> str:
    label = claim.chapter.split("_")[0] if claim.chapter[:1].isdigit() else claim.chapter
    href = f"chapters/{claim.chapter}.html"
    text = label
    if claim.section:
        heads = headings.get(claim.chapter)
        if heads is not None and claim.section not in heads:
            if strict:
                raise ScoreboardError(
                    f"scoreboard: claim {claim.chapter}/{claim.id} names the section "
                    f"{claim.section!r}, which is not a heading of chapters/{claim.chapter}.ipynb")
        else:
            href += "#" + section_anchor(claim.section)
            text += " § " + _plain(claim.section)
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def summary(claims: Sequence[Claim]) -> str:
    """``"12 claims from 6 chapters: 8 held, 3 did not hold, 1 not testable here."``"""
    counts = Counter(c.outcome for c in claims)
    chapters = len({c.chapter for c in claims})
    parts = ", ".join(f"{counts.get(o, 0)} {o}" for o in OUTCOMES)
    return (f"{len(claims)} claim{'s' if len(claims) != 1 else ''} from {chapters} "
            f"chapter{'s' if chapters != 1 else ''}: {parts}.")


def scoreboard_table(claims: Sequence[Claim], headings: Optional[Dict[str, List[str]]] = None,
                     strict: bool = True, digits: int = 3) -> str:
    """The scoreboard's Markdown table: where, claim, outcome, paper, ours, test; one row a claim.

    Args:
        claims: the claims, in the book's order.
        headings: each chapter's headings (:func:`chapter_headings`), to check and link sections.
        strict: a claim's section that is not a heading of its chapter is an error (else the
            row links to the chapter).
        digits: significant digits of our numbers.

    Returns:
        The table's Markdown source.
    """
    headings = headings or {}
    # the outcome right after the claim: on a narrow screen the last columns scroll out of view
    rows = [[_where(c, headings, strict), c.statement, f"**{c.outcome_text()}**",
             f"{c.paper} ({c.source})" if c.source else c.paper, c.ours(digits), c.test]
            for c in claims]
    return str(markdown_table(["where", "claim", "outcome", "paper", "ours", "test"], rows))


def build_page(page: str, claims_dir: Path, toc_path: Path, mode: Optional[str] = None,
               strict: bool = True, root: Optional[Path] = None) -> str:
    """The scoreboard page: ``page`` with its marker line replaced by the summary and table.

    Args:
        page: the committed page's text (must contain the line ``<!-- scoreboard-table -->``).
        claims_dir: the directory of one mode's claims files.
        toc_path: the book's ``_toc.yml`` (the chapter list and order).
        mode: the book's mode, checked against every file.
        strict: a missing claims file is an error (else the page lists the chapter as missing).
        root: the book's source directory (default: the directory of ``toc_path``).

    Returns:
        The page's text.

    Raises:
        MissingClaimsError, ScoreboardError: see :func:`gather`; a page without the marker.
    """
    if page.count(MARKER) != 1:
        raise ScoreboardError(f"scoreboard: the page must contain the line {MARKER} exactly once")
    root = Path(root) if root is not None else Path(toc_path).parent
    chapters = toc_chapters(toc_path, root)
    claims, missing = gather(claims_dir, chapters, mode, strict)
    headings = {ch: chapter_headings(root / "chapters" / f"{ch}.ipynb") for ch in chapters}
    parts = []
    if claims:
        parts += [summary(claims), "", scoreboard_table(claims, headings, strict)]
    if missing:
        listed = ", ".join(f"{{doc}}`chapters/{ch}`" for ch in missing)
        parts += ["", f"Not on the scoreboard yet (no claims file): {listed}."]
    return page.replace(MARKER, "\n".join(parts).strip("\n"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", required=True, type=Path, help="one mode's claims directory")
    parser.add_argument("--page", required=True, type=Path, help="the committed scoreboard.md")
    parser.add_argument("--out", required=True, type=Path, help="the staged page to write")
    parser.add_argument("--toc", default=ROOT / "_toc.yml", type=Path, help="the book's _toc.yml")
    parser.add_argument("--mode", choices=("quick", "full"), help="the book's mode")
    parser.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                        help="fail when a chapter has no claims file (default)")
    args = parser.parse_args(argv)
    try:
        text = build_page(args.page.read_text(encoding="utf-8"), args.claims, args.toc,
                          args.mode, args.strict)
    except (ScoreboardError, OSError) as e:
        print(e, file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
