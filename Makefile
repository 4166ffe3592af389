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
NGINX_PKGS := nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache
else
NGINX_PKGS :=
endif
# lua5.1 + lua-cjson: tests/test_schema_lua_agreement.py runs the Lua schema module outside nginx.
# openssl: the TLS tests make a throwaway certificate. wrk: make bench. lua-check: make lint.
# ca-certificates: the system CA store, for pip behind a TLS-intercepting proxy the machine trusts.
# chromium: the dashboard test opens zedcup's status page in headless Chromium.
TOOL_PKGS := lua5.1 lua-cjson lua-check openssl wrk ca-certificates chromium
# Debian's python3 has no ensurepip (so no `python3 -m venv`) without python3-venv.
VENV_PKGS := $(shell python3 -c 'import ensurepip, venv' 2>/dev/null || echo python3-venv)
APT_PKGS  := $(NGINX_PKGS) $(TOOL_PKGS) $(VENV_PKGS)

PYTEST_ARGS ?=

.PHONY: deps system-deps python-deps consul test test-dev test-real test-docker docker-deps lint lint-lua lint-python bench run clean

deps: system-deps python-deps consul

# Installs only what is missing: no apt-get update (and nothing else) when all is there.
system-deps:
	@.ci/apt-install "make deps" $(APT_PKGS)

python-deps: $(STAMP)

$(STAMP): controlplane/pyproject.toml | system-deps
	@if [ ! -x $(PY) ]; then echo "make deps: creating $(VENV)"; python3 -m venv $(VENV); fi
	echo "make deps: pip install -e 'controlplane[test]' into $(VENV)"
	$(PY) -m pip install -q --disable-pip-version-check -e 'controlplane[test]'
	touch $@

# A real Consul for the tests: $$CONSUL_BINARY, else `consul` on PATH, else Debian bullseye's
# consul package (1.8.7, a static binary that runs on bookworm) fetched through the mirror
# this machine's apt sources already name, with private apt lists (nothing system-wide is
# changed). Whichever it is, .tools/bin/consul links to it.
CONSUL_LINK := .tools/bin/consul

consul:
	@want=$${CONSUL_BINARY:-$$(command -v consul 2>/dev/null || true)}
	if [ -n "$$want" ]; then
	    [ "$$(readlink $(CONSUL_LINK) 2>/dev/null)" = "$$want" ] && exit 0
	    mkdir -p .tools/bin; ln -sfn "$$want" $(CONSUL_LINK)
	    echo "make deps: consul: using $$want"; exit 0
	fi
	fetched=$(CURDIR)/.tools/consul-deb/usr/bin/consul
	if [ -x "$$fetched" ]; then
	    [ "$$(readlink $(CONSUL_LINK) 2>/dev/null)" = "$$fetched" ] || { mkdir -p .tools/bin; ln -sfn "$$fetched" $(CONSUL_LINK); }
	    exit 0
	fi
	uri=$$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($$i !~ /security/) { print $$i; exit } }' \
	           /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
	[ -n "$$uri" ] || uri=$$(awk '$$1 == "deb" && $$0 !~ /security/ { for (i = 2; i <= NF; i++) \
	           if ($$i ~ /^[a-z]+:\/\//) { print $$i; exit } }' /etc/apt/sources.list 2>/dev/null || true)
	[ -n "$$uri" ] || { echo "make deps: consul: no Debian mirror in the apt sources; set CONSUL_BINARY" >&2; exit 1; }
	work=$$(mktemp -d); trap 'rm -rf "$$work"' EXIT
	mkdir -p "$$work/parts" "$$work/lists/partial"
	printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
	    "$$uri" > "$$work/parts/bullseye.sources"
	apt_opts="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$$work/parts -o Dir::State::Lists=$$work/lists"
	# apt's download sandbox user cannot write into a private temporary directory.
	[ "$$(id -u)" != 0 ] || apt_opts="$$apt_opts -o APT::Sandbox::User=root"
	echo "make deps: consul: fetching Debian bullseye's consul package"
	apt-get $$apt_opts -qq update
	(cd "$$work" && apt-get $$apt_opts -qq download consul)
	rm -rf .tools/consul-deb; mkdir -p .tools; dpkg -x "$$work"/consul_*.deb .tools/consul-deb
	mkdir -p .tools/bin; ln -sfn "$$fetched" $(CONSUL_LINK)
	echo "make deps: consul: $$($(CONSUL_LINK) version | head -1)"

lint: lint-lua lint-python

lint-lua: system-deps
	luacheck -q lua/ t/lib/

lint-python: python-deps
	$(RUFF) check controlplane/ tests/ bench/
	$(RUFF) format --check controlplane/ tests/ bench/

# The whole suite against dev-consul, then every test that talks to the session's Consul
# again against a real `consul agent -dev` (started and stopped by the tests). Both runs
# always run; the target fails when either did.
test: lint consul
	@rc=0
	echo "== make test: tests/ and t/ against dev-consul"
	$(PYTEST) -q -rs -p no:cacheprovider tests/ t/ $(PYTEST_ARGS) || rc=$$?
	echo "== make test: the tests that talk to Consul, against a real Consul ($$($(CONSUL_LINK) version | head -1))"
	$(PYTEST) -q -rs -p no:cacheprovider --consul=real --consul-only tests/ t/ $(PYTEST_ARGS) || rc=$$?
	exit $$rc

# One Consul only: `make test-dev` (dev-consul, everything), `make test-real` (the real
# Consul, only the tests that talk to Consul).
test-dev: lint
	$(PYTEST) -q -rs -p no:cacheprovider tests/ t/ $(PYTEST_ARGS)

test-real: lint consul
	$(PYTEST) -q -rs -p no:cacheprovider --consul=real --consul-only tests/ t/ $(PYTEST_ARGS)

# The Docker suite (tests/docker): Debian's docker.io, docker-compose and debootstrap when
# missing (root or sudo; without them the suite skips and says why), then pytest, which
# finds or starts a dockerd, makes debian:bookworm-slim when it cannot be pulled, builds the
# image, brings docker-compose.yml up and tears everything down at the end.
DOCKER_PKGS := docker.io docker-compose debootstrap

docker-deps:
	@.ci/apt-install "make test-docker" --optional $(DOCKER_PKGS)

test-docker: python-deps docker-deps
	ZEDCUP_TEST_DOCKER=1 $(PYTEST) -q -rs -s -p no:cacheprovider tests/docker $(PYTEST_ARGS)

# valgrind: bench/bench_balance_ir.py counts instructions per request with callgrind.
BENCH_PKGS := valgrind

bench: deps
	@.ci/apt-install "make bench" $(BENCH_PKGS)
	for script in bench/bench_*.py; do echo "== $$script"; $(PY) "$$script"; done

run: deps
	$(PY) -m zedctl.demo

clean:
	rm -rf $(VENV) .tools t/servroot* .pytest_cache .ruff_cache .hypothesis
