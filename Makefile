# The book's two commands:  make book  (QUICK=1 make book for quick mode)  and  make test.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt | cksum | cut -d' ' -f1)

QUICK ?= 0
ifeq ($(QUICK),1)
MODE := quick
QUICK_PY := True
else
MODE := full
QUICK_PY := False
endif

EXEC_DIR  := _build/executed/$(MODE)
STAGE_DIR := _build/source-$(MODE)
CHAPTERS  := $(sort $(wildcard chapters/*.ipynb))
EXECUTED  := $(patsubst chapters/%,$(EXEC_DIR)/%,$(CHAPTERS))
LIBRARY   := $(shell find flatness -name '*.py' 2>/dev/null) $(wildcard benchmarks/results/*.json)
PAGES     := _config.yml _toc.yml references.bib $(wildcard *.md) $(wildcard chapters/*.md)

export FLATNESS_CACHE ?= $(CURDIR)/_cache/models
export MPLBACKEND := module://matplotlib_inline.backend_inline
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export PYDEVD_DISABLE_FILE_VALIDATION := 1
# One BLAS/OpenMP thread per process: the book's models are small, extra threads only contend, and a
# fixed thread count keeps trained models (and so the shared cache) bit-identical from run to run.
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export OPENBLAS_NUM_THREADS := 1
# Every chapter writes its claims to $(FLATNESS_CLAIMS_DIR)/<quick|full>/<chapter>.json
# (flatness.claims.write_claims); tools/scoreboard.py gathers them into the staged scoreboard page.
# SCOREBOARD_STRICT=1: a chapter without a claims file fails the build (0 lists it on the page).
export FLATNESS_CLAIMS_DIR ?= $(CURDIR)/_build/claims
SCOREBOARD_STRICT ?= 1
SCOREBOARD = $(BIN)/python tools/scoreboard.py --toc _toc.yml --page scoreboard.md \
  --claims $(FLATNESS_CLAIMS_DIR)/$(MODE) --mode $(MODE) \
  $(if $(filter 1,$(SCOREBOARD_STRICT)),--strict,--no-strict)

.PHONY: help env book test unit nbval notebooks html preview lab expected normalize clean clean-cache

help:
	@echo "make book        set up .venv, execute every chapter (full mode), render _build/html"
	@echo "QUICK=1 make book  the same in quick mode (minutes on a laptop CPU)"
	@echo "make test        unit tests + doctests, every chapter in quick mode under nbval, quick book"
	@echo "make pdf         the book as one PDF (_build/latex/book.pdf; QUICK=1 for quick mode)"
	@echo "make browser-test  every page of _build/html in headless Chromium, offline"
	@echo "make paper DATASET=mnist DATA_ROOT=~/data DEVICE=cuda  the real-data chapters at paper scale"
	@echo "make lab         JupyterLab on the chapters"
	@echo "make expected CHAPTER=chapters/NAME.ipynb  refresh the outputs nbval compares"
	@echo "make normalize   put every chapter notebook in canonical form (stable ids, no stray outputs)"

env: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (flatness book)" > /dev/null
	@rm -f $(VENV)/.installed-*
	@touch $@

# The environment's Jupyter configuration (tools/jupyter/): JupyterLab's kernels get CurveZMQ
# transport encryption, and the kernels papermill and nbval start (which read no Jupyter
# configuration, so cannot be encrypted) do not log "Kernel is running over TCP without encryption";
# saving a chapter from Lab keeps its committed metadata (a pre-save hook, jupyter_server_config.py).
JUPYTER_CONFIG := $(VENV)/etc/ipython/ipython_kernel_config.py $(VENV)/etc/jupyter/jupyter_server_config.json \
  $(VENV)/etc/jupyter/jupyter_server_config.py
$(STAMP): | $(JUPYTER_CONFIG)
$(VENV)/etc/ipython/ipython_kernel_config.py: tools/jupyter/ipython_kernel_config.py
	@mkdir -p $(@D) && cp $< $@
$(VENV)/etc/jupyter/jupyter_server_config.json: tools/jupyter/jupyter_server_config.json
	@mkdir -p $(@D) && cp $< $@
$(VENV)/etc/jupyter/jupyter_server_config.py: tools/jupyter/jupyter_server_config.py
	@mkdir -p $(@D) && cp $< $@

# Execute one chapter with papermill; re-run only when the notebook or flatness changed.
$(EXEC_DIR)/%.ipynb: chapters/%.ipynb $(LIBRARY) | $(STAMP)
	@mkdir -p $(@D)
	@echo "executing $< ($(MODE) mode)"
	@start=$$(date +%s); \
	FLATNESS_QUICK=$(if $(filter quick,$(MODE)),1,0) FLATNESS_PROGRESS=0 \
	  $(BIN)/papermill --cwd chapters --kernel python3 --no-progress-bar --log-level ERROR \
	  -p QUICK $(QUICK_PY) $< $(@:.ipynb=.part.ipynb); \
	$(BIN)/python tools/normalize_notebooks.py --hide-injected $(@:.ipynb=.part.ipynb); \
	mv $(@:.ipynb=.part.ipynb) $@; echo "  done in $$(( $$(date +%s) - start )) s"

notebooks: $(EXECUTED)

# Stage the book source with the executed chapters, then build HTML with warnings as errors.
html: $(EXECUTED)
	@rm -rf $(STAGE_DIR) && mkdir -p $(STAGE_DIR)/chapters
	@cp $(PAGES) $(STAGE_DIR)/ 2>/dev/null || true
	@cp $(wildcard chapters/*.md) $(STAGE_DIR)/chapters/ 2>/dev/null || true
	@cp $(EXECUTED) $(STAGE_DIR)/chapters/
	$(SCOREBOARD) --out $(STAGE_DIR)/scoreboard.md
	@if [ -d images ]; then cp -r images $(STAGE_DIR)/; fi
	@if [ -d benchmarks/results ]; then mkdir -p $(STAGE_DIR)/benchmarks && cp -r benchmarks/results $(STAGE_DIR)/benchmarks/; fi
	$(BIN)/jupyter-book config sphinx $(STAGE_DIR) > /dev/null
	@rm -rf _build/html
	$(BIN)/sphinx-build -W --keep-going -q -b html $(STAGE_DIR) _build/html
	@echo "book: $(CURDIR)/_build/html/index.html ($(MODE) mode)"

book: html

# The scoreboard page alone, from the claims of the executed chapters, without building the book.
.PHONY: scoreboard
scoreboard: $(EXECUTED)
	$(SCOREBOARD) --out _build/scoreboard-$(MODE).md
	@echo "scoreboard: $(CURDIR)/_build/scoreboard-$(MODE).md ($(MODE) mode)"

# Paper scale on real data (running.md): each chapter of PAPER_CHAPTERS executed with papermill on the
# files under DATA_ROOT, on DEVICE, at SCALE, into _build/executed/paper/; claims go to their own
# folder (_build/claims-paper/), so they never mix with the book's scoreboard.
PAPER_CHAPTERS ?= 02_large_batch 05_occam_factor 06_noise_scale
DATASET ?= mnist
DATA_ROOT ?=
DEVICE ?= cpu
SCALE ?= paper
PAPER_OUT ?= _build/executed/paper
PAPER_CLAIMS ?= $(CURDIR)/_build/claims-paper/$(DATASET)
.PHONY: paper
paper: $(STAMP)
	@test -n "$(DATA_ROOT)" -o "$(DATASET)" = digits || (echo "usage: make paper DATASET=mnist|fashionmnist|cifar10 \
	DATA_ROOT=/path/to/files [DEVICE=cuda] [SCALE=paper|full|quick] [PAPER_CHAPTERS='02_large_batch ...']" && exit 2)
	@mkdir -p $(PAPER_OUT)
	@for c in $(PAPER_CHAPTERS); do \
	  echo "executing chapters/$$c.ipynb on $(DATASET), $(SCALE) scale, $(DEVICE)"; \
	  FLATNESS_CLAIMS_DIR=$(PAPER_CLAIMS) $(BIN)/papermill --cwd chapters --progress-bar \
	    -p DATASET $(DATASET) $(if $(DATA_ROOT),-p DATA_ROOT "$$(cd $(DATA_ROOT) && pwd)",) \
	    -p DEVICE $(DEVICE) -p SCALE $(SCALE) chapters/$$c.ipynb \
	    $(PAPER_OUT)/$$c.$(DATASET).$(SCALE).ipynb || exit 1; \
	done
	@echo "executed notebooks: $(PAPER_OUT)/; claims: $(PAPER_CLAIMS)/"

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests flatness tools --doctest-modules -p no:cacheprovider

# nbval re-executes every chapter in quick mode; cells marked NBVAL_CHECK_OUTPUT are compared.
nbval: $(STAMP)
	FLATNESS_QUICK=1 FLATNESS_PROGRESS=0 $(BIN)/python -m pytest -q --nbval-lax --nbval-cell-timeout=900 \
	  -p no:cacheprovider $(CHAPTERS)

test: unit nbval
	$(MAKE) --no-print-directory html QUICK=1
	@if command -v chromium >/dev/null 2>&1; then $(MAKE) --no-print-directory browser-test; \
	else echo "browser check skipped: no chromium on PATH (apt-get install chromium; .ci/run does)"; fi
	@if command -v xelatex >/dev/null 2>&1 && command -v latexmk >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory pdf QUICK=1; \
	else echo "PDF build skipped: no TeX Live (make pdf-deps installs it; .ci/run does)"; fi

# Load every page of the built book (_build/html) in headless Chromium with the network off and
# fail on what a reader would see wrong; known defects are listed in tests/browser/known_defects.txt.
browser-test: $(STAMP)
	@test -f _build/html/index.html || (echo "no _build/html: run make html first" && exit 2)
	$(BIN)/python tests/browser/check_book.py _build/html --allow tests/browser/known_defects.txt

# The whole book as one PDF (_build/latex/book.pdf): the staged source of `make html` through
# Sphinx's LaTeX builder and xelatex; TeX Live comes from Debian's packages, installed when missing
# (as root). tools/pdf_check.py then checks that every page of _toc.yml is in it.
TEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended \
  texlive-xetex fonts-freefont-otf poppler-utils
.PHONY: browser-test pdf pdf-deps
pdf-deps:
	@if ! command -v latexmk >/dev/null || ! command -v xelatex >/dev/null || ! command -v pdftotext >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then echo "installing TeX Live (Debian packages, about 570 MB)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES) > /dev/null; \
	  else echo "make pdf needs: sudo apt-get install --no-install-recommends $(TEX_PACKAGES)"; exit 1; fi; fi

pdf: html pdf-deps
	@rm -rf _build/latex
	$(BIN)/sphinx-build -W --keep-going -q -b latex $(STAGE_DIR) _build/latex
	@kpsewhich bbm.sty > /dev/null || cp tools/latex/bbm.sty _build/latex/
	@cd _build/latex && latexmk -xelatex -interaction=nonstopmode -halt-on-error book.tex > latexmk.log 2>&1 \
	  || (tail -40 latexmk.log; echo "latexmk failed: $(CURDIR)/_build/latex/latexmk.log"; exit 1)
	$(BIN)/python tools/pdf_check.py _build/latex/book.pdf --toc $(STAGE_DIR)/_toc.yml
	@echo "pdf: $(CURDIR)/_build/latex/book.pdf ($(MODE) mode)"

# Preview one chapter as a small book (for writing a chapter without executing the others).
preview: | $(STAMP)
	@test -n "$(CHAPTER)" || (echo "usage: make preview CHAPTER=chapters/NAME.ipynb [QUICK=1]" && exit 2)
	$(MAKE) --no-print-directory $(patsubst chapters/%,$(EXEC_DIR)/%,$(CHAPTER)) QUICK=$(QUICK)
	@rm -rf _build/preview && mkdir -p _build/preview/chapters
	@cp _config.yml references.bib bibliography.md _build/preview/
	@cp $(patsubst chapters/%,$(EXEC_DIR)/%,$(CHAPTER)) _build/preview/chapters/
	@printf '# Preview\n\nOne chapter of the book.\n' > _build/preview/index.md
	@printf 'format: jb-book\nroot: index\nchapters:\n  - file: chapters/%s\n  - file: bibliography\n' \
	  $(basename $(notdir $(CHAPTER))) > _build/preview/_toc.yml
	$(BIN)/jupyter-book config sphinx _build/preview > /dev/null
	$(BIN)/sphinx-build -W --keep-going -q -b html _build/preview _build/preview-html
	@echo "preview: $(CURDIR)/_build/preview-html/index.html"

lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=chapters $(if $(filter 0,$(shell id -u)),--allow-root,)

# Refresh the outputs nbval compares (claim cells) after a deliberate change of a chapter.
expected: $(STAMP)
	@test -n "$(CHAPTER)" || (echo "usage: make expected CHAPTER=chapters/NAME.ipynb" && exit 2)
	FLATNESS_QUICK=1 FLATNESS_PROGRESS=0 $(BIN)/python tools/expected_outputs.py $(CHAPTER)

normalize: $(STAMP)
	$(BIN)/python tools/normalize_notebooks.py $(CHAPTERS)

clean:
	rm -rf _build

clean-cache:
	rm -rf _cache
