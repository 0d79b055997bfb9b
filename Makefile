# The two commands (see README.md):
#   make demo   set everything up, then run the demo on a synthetic CT archive
#   make test   set everything up, then run the whole test suite
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/medcbir demo
test: setup
	MEDCBIR_REQUIRE_SYSTEM=1 .venv/bin/python -m pytest
bench: setup
	.venv/bin/python benchmarks/run_all.py
