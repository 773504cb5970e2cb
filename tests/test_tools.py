import nbformat

from tools.expected_outputs import MARK, strip_outputs


def _notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# t"),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell(f"# {MARK}\nprint('VERDICT: ok')")]
    return nb


def test_strip_keeps_only_marked_outputs():
    nb = _notebook()
    executed = _notebook()
    for cell, src in zip(executed.cells, nb.cells):
        cell["id"] = src["id"]
    executed.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="noise\n")]
    executed.cells[2].outputs = [nbformat.v4.new_output("stream", name="stdout", text="VERDICT: ok\n"),
                                 nbformat.v4.new_output("stream", name="stderr", text="warning\n")]
    out = strip_outputs(nb, executed)
    assert out.cells[1].outputs == []
    assert [o["text"] for o in out.cells[2].outputs] == ["VERDICT: ok\n"]
    nbformat.validate(out)


def test_committed_chapters_store_only_verdicts():
    import pathlib

    for path in sorted(pathlib.Path(__file__).parent.parent.glob("chapters/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        marked = [c for c in nb.cells if c.cell_type == "code" and MARK in c.source]
        assert marked, f"{path.name}: no claim cell marked {MARK}"
        for cell in nb.cells:
            if cell.cell_type == "code" and MARK not in cell.source:
                assert not cell.outputs, f"{path.name}: unmarked cell with stored output"
        assert any(c.outputs for c in marked), f"{path.name}: claim cell has no stored output"
        tags = nb.cells[[c.cell_type for c in nb.cells].index("code")].metadata.get("tags", [])
        assert "parameters" in tags, f"{path.name}: first code cell is not tagged 'parameters'"


def test_normalize_gives_stable_ids_and_keeps_given_ones():
    from tools.normalize_notebooks import normalize

    nb = _notebook()
    nb.cells[0]["id"] = "02-05"
    nb.cells[1]["id"] = "3f9a0c1e"          # a random id as Jupyter makes them
    nb.cells[2]["id"] = "02-05"             # a duplicate
    normalize(nb, "02")
    assert [c["id"] for c in nb.cells] == ["02-05", "02-00", "02-01"]
    again = nbformat.from_dict(nb)
    normalize(again, "02")
    assert [c["id"] for c in again.cells] == ["02-05", "02-00", "02-01"]
    nbformat.validate(nb)


def test_committed_chapters_are_in_canonical_form():
    import pathlib

    from tools.normalize_notebooks import canonical_text

    for path in sorted(pathlib.Path(__file__).parent.parent.glob("chapters/*.ipynb")):
        assert path.read_text() == canonical_text(path), \
            f"{path.name} is not in canonical form: run `make normalize`"


def test_injected_parameters_cell_is_hidden_in_executed_copies():
    from tools.normalize_notebooks import hide_injected_parameters

    nb = _notebook()
    nb.cells.insert(1, nbformat.v4.new_code_cell("QUICK = True"))
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    hide_injected_parameters(nb)
    assert nb.cells[1].metadata["tags"] == ["injected-parameters", "remove-cell"]
    assert "tags" not in nb.cells[2].metadata
