# tools/jupyter/ holds configuration files that the Makefile copies into .venv (an IPython config
# file is Python, but is not a module to import under `pytest --doctest-modules`).
collect_ignore = ["jupyter"]
