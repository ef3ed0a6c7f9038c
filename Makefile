# One entry point for set-up, tests and the demo; each target installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint tools clean

# Reference decoders the audio tests check dlqd's bytes with (`flac -t`, ffmpeg).
# Installed from Debian packages when missing and possible; without them those
# tests skip locally, and CI (CI=true) fails rather than skip them silently.
TEST_TOOLS := flac ffmpeg

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

tools:
	@missing=""; for tool in $(TEST_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  elif [ "$${CI:-}" = true ]; then \
	    echo "missing test tools:$$missing (apt-get install$$missing)" >&2; exit 1; \
	  else \
	    echo "missing test tools:$$missing - the audio cross-checks will skip" >&2; \
	  fi; \
	fi

test: lint tools
	$(BIN)/pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/dlqd demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
