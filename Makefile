# The two commands (see README.md):
#   make demo   set everything up, then run the demo on a synthetic CT archive
#   make test   set everything up, then run the whole test suite
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/medcbir demo
# the suite in two pytest-xdist workers, whole files to a worker (module fixtures built once)
test: setup
	.venv/bin/ruff check medcbir tests benchmarks scripts
	MEDCBIR_REQUIRE_SYSTEM=1 .venv/bin/python -m pytest -n 2 --dist loadfile
# make bench: every short benchmark, then the command of each long one (which is which:
# benchmarks/run_all.py --list; one section: run_all.py SECTION; every one: run_all.py --all)
bench: setup
	.venv/bin/python benchmarks/run_all.py
