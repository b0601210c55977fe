# Two commands do all the set-up on a fresh machine:
#   make run    installs what is needed, migrates, creates a staff login, and
#               serves the app with a worker on http://127.0.0.1:8000
#   make test   installs what is needed (Chromium too) and runs every test
.PHONY: run test setup lint bench

PY := .venv/bin/python

setup:
	bin/setup

run: setup
	$(PY) manage.py migrate --noinput
	$(PY) manage.py ensure_staff_user
	bin/serve

test:
	bin/setup --browser
	$(PY) -m pytest $(PYTEST_ARGS)

lint:
	.venv/bin/ruff check batches omrsite tests bench deploy

bench: setup
	$(PY) bench/omr_speed.py
	$(PY) bench/omr_accuracy.py
