# Two entry points: `make run` (demo dashboard) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
PORT ?= 8501

.PHONY: run test demo lint bench clean-demo

$(VENV)/.installed: requirements.txt requirements-ray.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-ray.txt
	touch $@

# The embedded demo: a synthetic COCO-format world extracted with the committed tiny ALBEF.
# Always invoked: it returns at once when the demo database is complete, and resumes it otherwise.
demo: $(VENV)/.installed
	$(PY) -m extractor demo --out $(DEMO)

run: demo
	$(PY) -m streamlit run dashboard/app.py --server.port $(PORT) -- --db $(DEMO)/demo.duckdb

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) -m bench.extract_bench
	$(PY) -m bench.throughput
	$(PY) -m bench.writer
	$(PY) -m bench.dashboard_bench
	$(PY) -m bench.demo_quality

clean-demo:
	rm -rf $(DEMO)
