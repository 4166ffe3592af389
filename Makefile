# zedcup: every target sets up what it needs on a fresh Debian bookworm machine.
# `make test` is the one command CI runs (through .ci/run).

SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

VENV    := .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
RUFF    := $(VENV)/bin/ruff
STAMP   := $(VENV)/.installed

# With OpenResty on PATH its bundled LuaJIT, lua-nginx-module and resty.* libraries
# are used, and the distro nginx is not installed.
OPENRESTY := $(shell command -v openresty 2>/dev/null)
ifeq ($(OPENRESTY),)
NGINX_PKGS := nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache lua-cjson
else
NGINX_PKGS :=
endif
TOOL_PKGS := wrk lua-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

PYTEST_ARGS ?=

.PHONY: deps system-deps python-deps test lint lint-lua lint-python bench run clean

deps: system-deps python-deps

system-deps:
	missing=""
	for pkg in $(NGINX_PKGS) $(TOOL_PKGS); do
	    dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$pkg"
	done
	if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then missing="$$missing python3-venv python3-pip"; fi
	if [ -n "$$missing" ]; then
	    echo "make deps: installing Debian packages:$$missing"
	    export DEBIAN_FRONTEND=noninteractive
	    $(SUDO) apt-get update -qq
	    $(SUDO) apt-get install -y -qq --no-install-recommends $$missing
	    # The Debian package starts a system nginx on port 80; tests start their own.
	    if [ -n "$(NGINX_PKGS)" ] && command -v systemctl >/dev/null && systemctl is-active -q nginx 2>/dev/null; then
	        $(SUDO) systemctl stop nginx || true
	    fi
	fi

python-deps: $(STAMP)

$(STAMP): controlplane/pyproject.toml
	if [ ! -x $(PY) ]; then echo "make deps: creating $(VENV)"; python3 -m venv $(VENV); fi
	echo "make deps: pip install -e 'controlplane[test]' into $(VENV)"
	$(PY) -m pip install -q --disable-pip-version-check -e 'controlplane[test]'
	touch $@

lint: deps lint-lua lint-python

lint-lua:
	luacheck -q lua/

lint-python:
	$(RUFF) check controlplane/ tests/ bench/
	$(RUFF) format --check controlplane/ tests/ bench/

test: deps lint
	$(PYTEST) -q -p no:cacheprovider tests/ t/ $(PYTEST_ARGS)

bench: deps
	for script in bench/bench_*.py; do echo "== $$script"; $(PY) "$$script"; done

run: deps
	$(PY) -m zedctl.demo

clean:
	rm -rf $(VENV) t/servroot* .pytest_cache .ruff_cache
