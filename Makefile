# The project's two commands are `make demo` and `make test`; `make bench` runs the benchmarks.
# Each creates .venv on first use and reinstalls only when a requirements file or pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Holoscan warns, and may crash deep call chains, below a 32 MiB stack.
RUN := ulimit -s 32768 2>/dev/null || true;

.PHONY: all setup test test-deps demo bench clean

all: test

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -e .
	@# load libcudart from the nvidia wheel at interpreter start where no CUDA toolkit is installed
	$(PY) -c "import site; open(site.getsitepackages()[0] + '/dermseg_cudart.pth', 'w').write('import dermseg_cudart\n')"
	touch $@

setup: $(STAMP)

# Debian packages the tests need (a real Orthanc PACS); tests/test_pacs.py fails loudly without them
test-deps:
	sh tests/system_deps.sh

test: $(STAMP) test-deps
	$(RUN) $(PY) -m pytest -n 2 --dist loadfile tests

demo: $(STAMP)
	$(RUN) $(PY) -m monai_app.demo

bench: $(STAMP)
	$(RUN) $(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache
