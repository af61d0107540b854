VENV    := .venv
PYTHON  := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PORT    ?= 8501
# Test processes (pytest-xdist): each takes whole test files, so a file's module fixtures are built once;
# files go out in collection order, longest first (tests/conftest.py, LONGEST_FIRST).
WORKERS ?= 2

.PHONY: setup run test test-fast lint bench browser clean testdeps

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# timm, torchvision and Ultralytics for the conformance tests only (never dependencies of prunelab):
# installed beside the venv, without their dependencies; the tests put the folder on sys.path themselves.
TESTDEPS := $(VENV)/testdeps

testdeps: $(TESTDEPS)/.installed

$(TESTDEPS)/.installed: | setup
	$(PYTHON) -m pip install --quiet --no-deps --target $(TESTDEPS) torchvision==0.28.0 timm ultralytics \
		ultralytics-thop opencv-python-headless py-cpuinfo polars
	touch $@

browser:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium; }

run: setup
	$(VENV)/bin/prunelab dashboard --port $(PORT)

lint: setup
	$(PYTHON) -m ruff check .

test: setup browser lint testdeps
	$(PYTHON) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder

test-fast: setup
	$(PYTHON) -m pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow and not browser"

bench: setup
	$(PYTHON) -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
