#!/usr/bin/env bash
# The whole test suite, from a fresh clone: install, start PostgreSQL if it is
# not running, lint, type-check, test. README's second command; .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev]'

# PostgreSQL for the tests that run the server on it (they skip, saying why,
# only when no server can be reached or started).
export PARLEY_TEST_POSTGRES="${PARLEY_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432/postgres}"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
      && pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start) || true
  fi
  for _ in $(seq 1 20); do pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null && break; sleep 0.5; done
fi

# redis-server for the cluster tests (tests/cluster): they start private ones on free
# ports, so only the program is needed here, not a running service; they skip, saying
# why, when it is missing.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) || true
  fi
fi

# Chromium and its driver for the staff console's browser tests (tests/e2e/test_console_browser.py):
# Debian's packages, driven by Selenium with the driver path given, so nothing is downloaded at
# test time; the tests skip, saying why, when these cannot be installed.
if ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || true
  fi
fi

.venv/bin/ruff check src tests
.venv/bin/ruff format --check src tests
.venv/bin/mypy
.venv/bin/pytest "$@"
