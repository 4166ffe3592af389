# zedcup on Debian bookworm: the distro nginx with the Lua module, zedctl in a virtualenv.
#   docker build -t zedcup .
#   docker run --rm zedcup                  # the test suite (make test)
#   docker run --rm -p 8080:8080 zedcup make run
# Like CI (.ci/run), the image starts from python3 and make only: `make deps` installs the
# rest (nginx + Lua module, lua5.1, luacheck, wrk, openssl, python3-venv, the .venv from PyPI).
FROM debian:bookworm-slim

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make python3 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /zedcup
COPY . .
# A .venv copied from the host points at the host's python: start from a clean tree.
RUN make clean \
 && make deps \
 && rm -rf /var/lib/apt/lists/*

CMD ["make", "test"]
