# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow bench lint clean report-check

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/jaxvae train --preset tiny --data shapes --out runs/demo --overwrite
	@# samples from a Gaussian mixture fitted to the training latents, beside the prior's in the report
	$(BIN)/jaxvae fit-sampler runs/demo --kind gmm --components 10
	$(BIN)/jaxvae report runs/demo

test: $(STAMP)
	@# headless Chromium for the report's browser test (tests/test_report.py skips that test without it)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium unavailable: browser test will skip"
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow"

# The end-to-end runs (subprocesses, several devices, kill -9, whole trainings): CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

# Open a run's report in headless Chromium: no failed or outside requests, every image decodes,
# the page is not blank. `make report-check RUN=runs/demo` (rewrites RUN/report.html first).
report-check: $(STAMP)
	@test -n "$(RUN)" || (echo "usage: make report-check RUN=runs/NAME" >&2; exit 2)
	$(BIN)/jaxvae report $(RUN)
	$(BIN)/python scripts/report_check.py $(RUN)/report.html --screenshot $(patsubst %/,%,$(RUN))-report.png

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
