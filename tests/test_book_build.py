"""The book's build tools: the author–year bibliography style, the browser check, the PDF check."""

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


check_book = _load("check_book", ROOT / "tests" / "browser" / "check_book.py")


# ------------------------------------------------------------------------------------------------
# tools/bibstyle.py
# ------------------------------------------------------------------------------------------------

BIB = r"""
@article{one, author = {Hochreiter, Sepp}, title = {A}, journal = {J}, year = {1997}}
@article{two, author = {Smith, Samuel L. and Le, Quoc V.}, title = {B}, journal = {J}, year = {2018}}
@article{many, author = {Keskar, N. and Mudigere, D. and Nocedal, J.}, title = {C}, journal = {J},
         year = {2017}}
@article{accent, author = {M{\"u}ller, Max and Jastrz{\k{e}}bski, S.}, title = {D}, journal = {J},
         year = {2023}}
@article{yao1, author = {Yao, Z. and Gholami, A. and Lei, Q.}, title = {E}, journal = {J}, year = {2018}}
@article{yao2, author = {Yao, Z. and Gholami, A. and Keutzer, K.}, title = {F}, journal = {J}, year = {2018}}
"""


@pytest.fixture(scope="module")
def bib():
    pybtex = pytest.importorskip("pybtex.database")
    return pybtex.parse_string(BIB, "bibtex")


def test_author_year_label_follows_the_citation_form(bib):
    from tools.bibstyle import author_year_label

    e = bib.entries
    assert author_year_label(e["one"]) == "Hochreiter, 1997"
    assert author_year_label(e["two"]) == "Smith and Le, 2018"
    assert author_year_label(e["many"]) == "Keskar et al., 2017"
    assert author_year_label(e["accent"]) == "Müller and Jastrzębski, 2023"  # LaTeX accents decoded


def test_authoryear_style_labels_the_list_and_disambiguates(bib):
    from pybtex.plugin import find_plugin

    from tools import bibstyle

    bibstyle.setup(None)
    style = find_plugin("pybtex.style.formatting", "authoryear")()
    labels = {e.key: e.label for e in style.format_entries(bib.entries.values())}
    assert labels["many"] == "Keskar et al., 2017"
    # the two "Yao et al., 2018" get a and b, in the list's (author-year-title) order
    assert sorted([labels["yao1"], labels["yao2"]]) == ["Yao et al., 2018a", "Yao et al., 2018b"]


def test_the_book_bibliography_is_clean_and_every_citation_exists():
    """No raw TeX command survives in the rendered entries, and every cited key is in the .bib."""
    import re

    pybtex = pytest.importorskip("pybtex.database")
    from pybtex.plugin import find_plugin

    from tools import bibstyle

    bibstyle.setup(None)
    bib = pybtex.parse_file(str(ROOT / "references.bib"))
    style = find_plugin("pybtex.style.formatting", "authoryear")()
    for entry in style.format_entries(bib.entries.values()):
        text = entry.text.render_as("text")
        assert "\\" not in text and "$" not in text, (entry.key, text)
    cited = set()
    sources = list(ROOT.glob("*.md")) + list(ROOT.glob("chapters/*.ipynb"))
    for path in sources:
        for keys in re.findall(r"\{cite(?::[a-z]+)?\}`([^`]+)`", path.read_text()):
            cited.update(k.strip() for k in keys.split(","))
    assert cited - set(bib.entries) == set()


# ------------------------------------------------------------------------------------------------
# tests/browser/check_book.py
# ------------------------------------------------------------------------------------------------

def test_allow_list_rejects_unknown_kinds_and_malformed_lines():
    with pytest.raises(ValueError, match="unknown kind"):
        check_book.parse_allow_list("intro.html raw_tex\n")
    with pytest.raises(ValueError, match="expected 'page kind'"):
        check_book.parse_allow_list("intro.html\n")


def test_judge_fails_only_on_pairs_not_allowed():
    d = [check_book.Defect("a.html", "raw-tex", "$x$"),
         check_book.Defect("a.html", "output-cut", "..."),
         check_book.Defect("b.html", "console-error", "boom")]
    allowed = {("a.html", "raw-tex"), ("a.html", "output-cut"), ("c.html", "figure-number")}
    new, known, stale = check_book.judge(d, allowed)
    assert [x.key for x in new] == [("b.html", "console-error")]
    assert len(known) == 2
    assert stale == {("c.html", "figure-number")}
    assert check_book.report(d, allowed, out=open("/dev/null", "w")) == 1
    assert check_book.report(d[:2], allowed, out=open("/dev/null", "w")) == 0


PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8">{head}</head>
<body><main><article>{body}</article></main></body></html>"""


def _site(tmp_path):
    """A tiny built 'book': one clean page and one with a defect of every kind."""
    site = tmp_path / "html"
    (site / "chapters").mkdir(parents=True)
    (site / "index.html").write_text('<html><head><meta http-equiv="Refresh" '
                                     'content="0; url=clean.html" /></head></html>')
    (site / "clean.html").write_text(PAGE.format(head="", body=(
        "<p>Plain prose with a | pipe inside a line.</p>"
        '<figure id="f"><img src="x.png"><figcaption><p><span class="caption-number">Fig. 1 '
        "</span>A figure.</p></figcaption></figure>"
        '<div class="cell_output"><pre>short line</pre></div>'
        "<pre>$not checked in code$ \\frac</pre>")))
    (site / "x.png").write_bytes(b"")
    wide = "x" * 400
    (site / "chapters" / "bad.html").write_text(PAGE.format(
        head="<script>console.error('boom');</script>"
             '<script src="https://cdn.example.org/lib.js"></script>',
        body=("<p>The Hessian $\\nabla^2 L$ left raw.</p>"
              "<p>| a | b |\n| --- | --- |</p>"
              "<p>See {prf:ref}`def-x`.</p>"
              '<figure><img src="../x.png"><figcaption><p>No number.</p></figcaption></figure>'
              f'<div class="cell_output" style="width:300px"><pre style="overflow:auto">{wide}'
              "</pre></div>")))
    return site


@pytest.mark.skipif(check_book.find_chromium() is None, reason="needs chromium")
def test_browser_check_finds_each_kind_of_defect_and_nothing_on_a_clean_page(tmp_path):
    pytest.importorskip("websocket")
    site = _site(tmp_path)
    assert check_book.pages(site) == ["chapters/bad.html", "clean.html"]  # redirect left out
    defects = check_book.check_book(site, check_book.find_chromium(), timeout=30)
    kinds = {d.kind for d in defects if d.page == "chapters/bad.html"}
    assert kinds == {"raw-tex", "markdown-table", "myst-syntax", "figure-number", "output-cut",
                     "console-error", "external-request"}
    assert [d for d in defects if d.page == "clean.html"] == []


def test_pdf_check_reads_the_toc_in_order(tmp_path):
    pdf_check = _load("pdf_check", ROOT / "tools" / "pdf_check.py")
    files = pdf_check.toc_files(ROOT / "_toc.yml")
    assert files[0] == "intro" and "bibliography" in files
    for name in files:
        assert pdf_check.find_source(ROOT, name) is not None or name == "scoreboard", name


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs pdftotext")
def test_pdf_check_fails_on_a_missing_chapter(tmp_path):
    """A PDF made from a one-line .tex lacks every chapter: the check names them."""
    pdf_check = _load("pdf_check", ROOT / "tools" / "pdf_check.py")
    if shutil.which("xelatex") is None:
        pytest.skip("needs xelatex")
    import subprocess

    (tmp_path / "t.tex").write_text("\\documentclass{article}\\begin{document}Only this."
                                    "\\end{document}\n")
    subprocess.run(["xelatex", "-interaction=nonstopmode", "t.tex"], cwd=tmp_path, check=True,
                   capture_output=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: b\n")
    (tmp_path / "intro.md").write_text("# Only this\n")
    (tmp_path / "b.md").write_text("# A missing chapter\n")
    failures = pdf_check.check(tmp_path / "t.pdf", tmp_path / "_toc.yml", None, tmp_path)
    assert any("A missing chapter" in f for f in failures)
    assert not any("Only this" in f for f in failures)
    assert any("Bibliography" in f for f in failures)


# ------------------------------------------------------------------------------------------------
# benchmarks/curvature.py: where a run writes
# ------------------------------------------------------------------------------------------------

def test_quick_benchmark_never_writes_the_committed_results():
    curvature = pytest.importorskip("benchmarks.curvature")
    committed = ROOT / "benchmarks" / "results" / "curvature.json"
    assert curvature.output_path(None, quick=False) == committed
    quick = curvature.output_path(None, quick=True)
    assert quick != committed and (ROOT / "_build") in quick.parents
    assert curvature.output_path(Path("elsewhere.json"), quick=False) == Path("elsewhere.json")
