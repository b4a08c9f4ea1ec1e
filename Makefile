# The two commands: `make book` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test venv lint bench clean notebooks smoke-aws dist

# The development set (requirements-dev.txt: the learners' requirements.txt plus tests, linters and
# the book build); learners need only `pip install -r requirements.txt`.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

venv: $(STAMP)

## Build the book, executing every notebook against the sample world (a failing cell fails the build).
## --all: Sphinx re-reads every page, so every notebook runs again (execute_notebooks: force) even when
## only abc_helpers changed; otherwise pages whose .ipynb did not change would keep older outputs.
book: $(STAMP)
	$(PY) -m abc_helpers.sample build
	$(VENV)/bin/jupyter-book build . --all --warningiserror --keep-going
	@echo "Book: $(CURDIR)/_build/html/index.html"

## Run every test, including nbval over the stored outputs of book/*.ipynb, on every core: pytest-xdist
## workers, each test module (and each notebook's cells) on one worker; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m abc_helpers.sample build
	$(PY) -m pytest tests abc_helpers --doctest-modules --nbval book --nbval-sanitize-with book/sanitize.cfg \
		-p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope

## ruff and mypy over the code; actionlint and zizmor (offline: no GitHub API) over the workflows.
lint: $(STAMP)
	$(VENV)/bin/ruff check abc_helpers tests bench book tools
	$(VENV)/bin/mypy
	$(VENV)/bin/actionlint .github/workflows/*.yml
	$(VENV)/bin/zizmor --offline --quiet .github/workflows

## Re-execute the notebooks in place (their stored outputs are what readers and nbval see).
notebooks: $(STAMP)
	$(PY) -m abc_helpers.sample build
	$(PY) tools/run_notebooks.py

## Every chapter against the REAL services (needs internet) with the small profiles of book/profiles/aws:
## 7 to 11.5 GB downloaded, one chapter's data (at most 7 GB) on disk at a time; executed notebooks in $(SMOKE_OUT).
SMOKE_OUT ?= _build/smoke
smoke-aws: $(STAMP)
	$(PY) tools/smoke.py --profiles book/profiles/aws --out $(SMOKE_OUT)

## The sdist and the wheel in dist/ (offline: the venv's setuptools), checked by twine.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist .
	$(VENV)/bin/twine check --strict dist/*

bench: $(STAMP)
	for b in bench/[!_]*.py; do $(PY) $$b --quick || exit 1; done

clean:
	rm -rf _build dist build abc_helpers.egg-info

## Optional: the real AllenSDK (in its own venv: it pins numpy<1.24) against the sample VBN bucket.
ALLENSDK_VENV := .venv-allensdk

$(ALLENSDK_VENV)/.installed:
	$(PYTHON) -m venv $(ALLENSDK_VENV)
	$(ALLENSDK_VENV)/bin/pip install -q --upgrade pip
	# hdmf<4: pynwb 2.8.3 (pulled by allensdk 2.16.2) does not cap hdmf and breaks with hdmf 6
	$(ALLENSDK_VENV)/bin/pip install -q allensdk==2.16.2 "hdmf<4"
	touch $@

fidelity: $(STAMP) $(ALLENSDK_VENV)/.installed
	$(PY) -m pytest tests/fidelity/test_fidelity_allensdk.py -q -p no:cacheprovider
.PHONY: fidelity

## Full-page screenshots of every page of the built book (run `make book` first) in _build/screenshots/,
## with each page's count of figures, captions and alt texts.
screenshots: $(STAMP)
	$(PY) tools/screenshots.py --html _build/html --out _build/screenshots
.PHONY: screenshots
