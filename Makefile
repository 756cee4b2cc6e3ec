# taskyard — `make serve` runs the service on SQLite; `make test` runs every test.
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := .tools/bin/uv
endif
export UV_PYTHON_DOWNLOADS := never
VENV := .venv/bin

.PHONY: serve test lint format typecheck bench bench-scale bench-backlog install clean

# uv comes from PyPI when the machine lacks it, into a private tools venv.
.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv

# Bytecode is compiled ahead: where PYTHONDONTWRITEBYTECODE is set (as on this machine) Python
# never caches it, and every process would compile fastapi, sqlalchemy and the rest from source
# again (a node started in 5 s instead of 2.5 s; the tests start hundreds).
.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode
	@touch $@

# Our own modules too, at each run (only what changed is compiled again).
.PHONY: bytecode
bytecode: .venv/.synced
	@$(VENV)/python -m compileall -q src tests benchmarks > /dev/null

install: .venv/.synced

serve: bytecode
	$(VENV)/taskyard serve

# lint-imports: the layers and the self-contained domain ([tool.importlinter] in pyproject.toml)
lint: .venv/.synced
	$(VENV)/ruff check src tests benchmarks
	$(VENV)/ruff format --check src tests benchmarks
	$(VENV)/lint-imports

typecheck: .venv/.synced
	$(VENV)/mypy

# One worker per core, each test file on one worker (its module-scoped nodes stay shared):
# most tests wait on real processes, so two cores run the suite in well under the serial time.
test: lint typecheck bytecode
	$(VENV)/python -m pytest -n auto --dist loadfile

format: .venv/.synced
	$(VENV)/ruff check --fix src tests benchmarks
	$(VENV)/ruff format src tests benchmarks

bench: .venv/.synced
	$(VENV)/python benchmarks/run.py $(ARGS)

# direct, sqlite x1, postgresql x1 and postgresql x2 in one run and one table
bench-scale: .venv/.synced
	$(VENV)/python benchmarks/run.py --compare $(ARGS)

# dispatch rate with 1,000 and with 50,000 tasks waiting, on sqlite and postgresql
bench-backlog: .venv/.synced
	$(VENV)/python benchmarks/backlog.py $(ARGS)

# search and stats latency with 1,000 and 200,000 tasks stored (sqlite, postgresql), and
# end-to-end throughput with the statistics' bookkeeping vs before it (9a93166)
.PHONY: bench-observe
bench-observe: .venv/.synced
	$(VENV)/python benchmarks/observe.py $(ARGS)

# rate limits and the unfinished-task cap on the create path: off vs memory vs redis
# POST /api/task one by one vs POST /api/tasks/batch, tasks stored per second
.PHONY: bench-submit
bench-submit: .venv/.synced
	$(VENV)/python benchmarks/submit.py $(ARGS)

# issue 11's targets in one table: direct, Celery + Redis, taskyard; latency; submit rates
.PHONY: bench-compare
bench-compare: .venv/.synced
	UV_PROJECT_ENVIRONMENT=.venv-bench $(UV) sync --frozen --group bench --no-dev --compile-bytecode --quiet
	$(VENV)/python benchmarks/compare.py $(ARGS)

.PHONY: bench-ratelimit soak
bench-ratelimit: .venv/.synced
	$(VENV)/python benchmarks/ratelimit.py $(ARGS)

# 10 minutes at half the probed capacity, backends killed every minute, a node restarted
soak: .venv/.synced
	$(VENV)/python benchmarks/soak.py $(ARGS)

clean:
	rm -rf .venv .tools .mypy_cache .ruff_cache .pytest_cache
