# Two entry points: `make run` (demo dashboard) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO := data/demo
PORT ?= 8501

.PHONY: run test demo lint bench clean-demo

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The embedded demo: a synthetic COCO-format world extracted with the committed tiny ALBEF.
$(DEMO)/demo.duckdb: $(VENV)/.installed
	$(PY) -m extractor demo --out $(DEMO)

demo: $(DEMO)/demo.duckdb

run: demo
	$(PY) -m streamlit run dashboard/app.py --server.port $(PORT) -- --db $(DEMO)/demo.duckdb

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) bench/extract_bench.py
	$(PY) bench/dashboard_bench.py
	$(PY) bench/demo_quality.py

clean-demo:
	rm -rf $(DEMO)
