# zedcup in one image, for every role of a cluster (docker/entrypoint.sh picks it):
#
#   docker build -t zedcup .
#   docker run zedcup consul -bootstrap-expect 1      # a Consul server (Consul 1.8.7)
#   docker run zedcup node                            # nginx + zedcup, 2 workers, :8080 and :80
#   docker run zedcup backend                         # a demo backend on :80
#   docker run zedcup configure [FILE]                # zedctl configure, once Consul has a leader
#   docker run zedcup zedctl ...                      # anything else runs as given
#
# docker-compose.yml runs them all: 3 Consul servers, 2 zedcup nodes, 3 backends.
# When debian:bookworm-slim cannot be pulled (no registry), `make test-docker` makes it
# from Debian packages with debootstrap and tags it so: this file is the same either way.

# --- Consul: Debian bullseye's consul 1.8.7 (static), fetched by `make consul` through the
# mirror the base image's apt sources name.
FROM debian:bookworm-slim AS consul
# (the classic builder keeps this stage as an untagged image: make test-docker prunes it)
LABEL org.zedcup.build-stage=consul
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
RUN make consul && cp -L .tools/bin/consul /consul && /consul version

# --- the image
FROM debian:bookworm-slim

# Dependencies first, so a change to the source reuses these layers. Service starts are
# forbidden during the install (policy-rc.d): Debian's nginx would start on port 80.
# zedctl's dependencies (click, requests, PyYAML) come from Debian too; its venv sees them.
RUN printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        nginx libnginx-mod-http-lua lua-resty-core lua-resty-lrucache lua-cjson \
        python3 python3-venv python3-setuptools python3-wheel \
        python3-click python3-requests python3-yaml >/dev/null \
 && rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default \
 && mkdir -p /var/lib/consul

COPY --from=consul /consul /usr/local/bin/consul

WORKDIR /opt/zedcup
COPY lua/ lua/
COPY controlplane/ controlplane/
# zedctl in a venv that sees Debian's packages; --no-deps: its dependencies are Debian's
# (python-consul2 is only for zedctl's tests). The venv's own pip is not kept.
RUN python3 -m venv --system-site-packages /opt/zedctl \
 && /opt/zedctl/bin/pip install -q --no-cache-dir --disable-pip-version-check \
        --no-deps --no-build-isolation ./controlplane \
 && /opt/zedctl/bin/pip uninstall -q -y pip \
 && ln -s /opt/zedctl/bin/zedctl /usr/local/bin/zedctl \
 && rm -rf controlplane/build controlplane/*.egg-info \
 && zedctl --help >/dev/null
COPY nginx/ nginx/
COPY docker/entrypoint.sh /usr/local/bin/zedcup-entrypoint

# :80 the seed README's example server and the backends, :8080 the demo (/, /proxy/,
# /_status), :8500 Consul's HTTP API.
EXPOSE 80 8080 8500
ENTRYPOINT ["zedcup-entrypoint"]
CMD ["node"]
# Per role: Consul has a leader; a node answers /_status on :8080; a backend answers
# /_health; other commands have no check (healthy).
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["zedcup-entrypoint", "health"]
