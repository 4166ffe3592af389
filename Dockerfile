# zedcup on Debian bookworm: the distro nginx with the Lua module, zedctl in a virtualenv.
#   docker build -t zedcup .
#   docker run --rm zedcup                  # the test suite (make test)
#   docker run --rm -p 8080:8080 zedcup make run
FROM debian:bookworm-slim

RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      make python3 python3-venv python3-pip ca-certificates openssl procps \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /zedcup
COPY . .
RUN make deps

CMD ["make", "test"]
