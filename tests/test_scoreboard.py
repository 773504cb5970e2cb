"""The scoreboard (tools/scoreboard.py): every claim of every chapter, or a clear error."""

import json
from pathlib import Path

import nbformat
import pytest

from flatness import claims as C
from tools import scoreboard as S

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = {"00_basics": ["## The network", "## Trace and $\\mathrm{tr}\\,H$"],
            "01_large_batch": ["## Keskar et al.'s comparison: SB against LB", "## The verdict"],
            "appendix_speed": ["## The goals, checked"]}
COUNTS = {"00_basics": 2, "01_large_batch": 3, "appendix_speed": 1}


def _book(tmp_path: Path) -> Path:
    """A book source: a toc with an intro, a page and three chapter notebooks."""
    (tmp_path / "chapters").mkdir()
    for stem, heads in CHAPTERS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# Chapter {stem}")]
        nb.cells += [nbformat.v4.new_markdown_cell(f"{h}\n\ntext\n```\n# not a heading\n```")
                     for h in heads]
        nbformat.write(nb, tmp_path / "chapters" / f"{stem}.ipynb")
    (tmp_path / "intro.md").write_text("# Intro\n")
    (tmp_path / "scoreboard.md").write_text("# Scoreboard\n\nguide\n\n" + S.MARKER + "\n\nend\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: intro\nparts:\n  - caption: A\n    chapters:\n"
        "      - file: scoreboard\n      - file: chapters/00_basics\n"
        "      - file: chapters/01_large_batch\n  - caption: B\n    chapters:\n"
        "      - file: chapters/appendix_speed\n")
    return tmp_path


def _write(directory: Path, stems=tuple(CHAPTERS), quick=True):
    for stem in stems:
        heads = [h.lstrip("# ") for h in CHAPTERS[stem]]
        cs = []
        for i in range(COUNTS[stem]):
            ratio = C.Measurement.bootstrap("ratio", [1.0 + i, 2.0 + i, 1.5 + i])
            cs.append(C.Claim(stem, f"claim-{i}", f"Claim {i} of {stem}.", f"{i + 2}",
                              "Table 1", C.interval_above(ratio, threshold=1.5), C.HELD,
                              section=heads[i % len(heads)]))
        C.write_claims(cs, stem, directory, quick=quick)


def test_toc_lists_the_chapter_notebooks_in_order(tmp_path):
    book = _book(tmp_path)
    assert S.toc_chapters(book / "_toc.yml") == list(CHAPTERS)


def test_scoreboard_lists_every_claim_of_every_chapter(tmp_path):
    book = _book(tmp_path)
    _write(tmp_path / "claims")
    page = S.build_page((book / "scoreboard.md").read_text(), tmp_path / "claims" / "quick",
                        book / "_toc.yml", mode="quick")
    rows = [line for line in page.splitlines() if line.startswith("| <a href=")]
    assert len(rows) == sum(COUNTS.values())
    for stem, n in COUNTS.items():
        for i in range(n):
            assert sum(f"Claim {i} of {stem}." in r for r in rows) == 1
    # the book's order, and links to the sections' HTML ids
    assert [r.split('"')[1].split("#")[0] for r in rows] == (
        ["chapters/00_basics.html"] * 2 + ["chapters/01_large_batch.html"] * 3
        + ["chapters/appendix_speed.html"])
    assert "chapters/01_large_batch.html#keskar-et-al-s-comparison-sb-against-lb" in rows[2]
    assert "chapters/00_basics.html#trace-and-mathrm-tr-h" in rows[1]
    # outcomes are the ones the numbers give: the first claim of each chapter has [1, 2] ≯ 1.5
    assert "**did not hold**" in rows[0] and "**held**" in rows[1]
    assert "6 claims from 3 chapters: 3 held, 3 did not hold, 0 not testable here." in page
    assert S.MARKER not in page and page.startswith("# Scoreboard\n\nguide") and page.endswith("end\n")


def test_a_missing_claims_file_is_an_error_naming_the_chapter(tmp_path, capsys):
    book = _book(tmp_path)
    _write(tmp_path / "claims", stems=("00_basics", "appendix_speed"))
    with pytest.raises(S.MissingClaimsError) as e:
        S.build_page((book / "scoreboard.md").read_text(), tmp_path / "claims" / "quick",
                     book / "_toc.yml")
    assert e.value.missing == ["01_large_batch"] and "01_large_batch" in str(e.value)
    out = tmp_path / "out" / "scoreboard.md"
    args = ["--claims", str(tmp_path / "claims" / "quick"), "--page", str(book / "scoreboard.md"),
            "--out", str(out), "--toc", str(book / "_toc.yml")]
    assert S.main(args) == 1 and not out.exists()
    assert "no claims file for 1 chapter(s): 01_large_batch" in capsys.readouterr().err
    # not strict: the page lists the chapter as missing
    assert S.main(args + ["--no-strict"]) == 0
    text = out.read_text()
    assert "Not on the scoreboard yet (no claims file): {doc}`chapters/01_large_batch`." in text
    assert "3 claims from 2 chapters" in text


def test_no_claims_file_at_all_is_an_error_listing_every_chapter(tmp_path):
    book = _book(tmp_path)
    with pytest.raises(S.MissingClaimsError) as e:
        S.gather(tmp_path / "nothing", S.toc_chapters(book / "_toc.yml"))
    assert e.value.missing == list(CHAPTERS)


def test_files_of_another_mode_or_chapter_are_errors(tmp_path):
    book = _book(tmp_path)
    _write(tmp_path / "claims", quick=False)
    with pytest.raises(S.ScoreboardError, match="full mode"):
        S.build_page((book / "scoreboard.md").read_text(), tmp_path / "claims" / "full",
                     book / "_toc.yml", mode="quick")
    full = tmp_path / "claims" / "full"
    (full / "00_basics.json").write_text((full / "appendix_speed.json").read_text())
    with pytest.raises(S.ScoreboardError, match="appendix_speed"):
        S.gather(full, ["00_basics"])
    (full / "00_basics.json").write_text(json.dumps({"format": 1}))
    with pytest.raises(S.ScoreboardError, match="not a claims file"):
        S.gather(full, ["00_basics"])


def test_a_section_that_is_not_a_heading_is_an_error(tmp_path):
    book = _book(tmp_path)
    d = C.interval_above(2.0, None, 1.0)
    C.write_claims([C.Claim("00_basics", "a", "S.", "1", "", d, C.HELD, section="No such")],
                   "00_basics", tmp_path / "claims", quick=True)
    _write(tmp_path / "claims", stems=("01_large_batch", "appendix_speed"))
    page = (book / "scoreboard.md").read_text()
    with pytest.raises(S.ScoreboardError, match="'No such'"):
        S.build_page(page, tmp_path / "claims" / "quick", book / "_toc.yml")
    loose = S.build_page(page, tmp_path / "claims" / "quick", book / "_toc.yml", strict=False)
    assert '<a href="chapters/00_basics.html">00</a>' in loose


def test_the_book_has_a_scoreboard_and_lists_every_chapter():
    stems = sorted(p.stem for p in (ROOT / "chapters").glob("*.ipynb"))
    assert sorted(S.toc_chapters(ROOT / "_toc.yml")) == stems
    assert "scoreboard" in S.toc_files(S._load_yaml(ROOT / "_toc.yml"))
    assert (ROOT / "scoreboard.md").read_text().count(S.MARKER) == 1
