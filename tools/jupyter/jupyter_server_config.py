# The book's Jupyter server configuration (installed by the Makefile into .venv/etc/jupyter/, beside
# jupyter_server_config.json, where `make lab` reads it).
#
# Opening a chapter in JupyterLab and saving it, even without an edit, would rewrite it: the kernel
# reports a `metadata.language_info` block (with the reader's exact Python version) and Lab records
# the running kernel's display name in `metadata.kernelspec` (and, with Lab's "record timing"
# setting on, each cell's `metadata.execution` timestamps), so a reader's git tree went dirty.
# This pre-save hook puts a chapter's metadata back into the committed canonical form
# (tools/normalize_notebooks.py: kernel `python3` shown as "Python 3", no language_info, no
# execution timestamps), so
# an open-execute-save round trip changes nothing but the outputs the reader chose to keep.
# tests/test_lab_roundtrip.py saves through a real Jupyter server with this file as its config.

CANONICAL_KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}


def canonical_notebook_metadata(model, path, contents_manager, **kwargs):
    """Jupyter ``ContentsManager.pre_save_hook``: canonical notebook metadata for the book's chapters."""
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    metadata = model["content"].setdefault("metadata", {})
    if metadata.get("kernelspec", {}).get("name") != CANONICAL_KERNELSPEC["name"]:
        return  # a notebook on another kernel is not one of the book's chapters: leave it alone
    metadata.pop("language_info", None)
    metadata["kernelspec"] = dict(CANONICAL_KERNELSPEC)
    for cell in model["content"].get("cells", []):
        cell.get("metadata", {}).pop("execution", None)


c = get_config()  # noqa: F821 (provided by the traitlets config loader)
c.ContentsManager.pre_save_hook = canonical_notebook_metadata
