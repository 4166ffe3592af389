#!/bin/sh
# zedcup image entry point: the first argument picks the container's role.
#
#   consul [ARGS]      a Consul server (data in /var/lib/consul), ARGS added to
#                      `consul agent -server` (e.g. -bootstrap-expect 3 -retry-join consul1)
#   node               nginx with zedcup (nginx/docker-node.conf); Consul at
#                      $ZEDCUP_CONSUL_HOST:$ZEDCUP_CONSUL_PORT (default consul:8500)
#   backend            a demo backend (nginx/docker-backend.conf), answering its hostname
#   configure [FILE]   wait for a Consul leader, then `zedctl configure FILE`
#                      (default nginx/docker-demo.yaml)
#   health             the HEALTHCHECK of whichever role this container runs
#   anything else      run as given (zedctl ..., sh)
set -eu

ROLE_FILE=/run/zedcup-role
CONSUL_HOST=${ZEDCUP_CONSUL_HOST:-consul}
CONSUL_PORT=${ZEDCUP_CONSUL_PORT:-8500}
export ZEDCUP_CONSUL_HOST="$CONSUL_HOST" ZEDCUP_CONSUL_PORT="$CONSUL_PORT"

# 0 when GET $1 answers 2xx with a body matching the regex $2 (python3: no curl here)
http_ok() {
    python3 - "$1" "${2:-}" <<'PY'
import re, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as res:
        body = res.read().decode("utf-8", "replace")
except Exception as e:
    print(f"{sys.argv[1]}: {e}")
    sys.exit(1)
if not re.search(sys.argv[2], body):
    print(f"{sys.argv[1]}: unexpected answer {body[:200]!r}")
    sys.exit(1)
PY
}

role=${1:-node}
[ $# -eq 0 ] || shift
case "$role" in
consul)
    echo consul > "$ROLE_FILE"
    # raft_multiplier 1: Consul's recommended production timing (leader elected in
    # about a second instead of the default 5x).
    exec consul agent -server -data-dir /var/lib/consul -client 0.0.0.0 -ui \
        -hcl 'performance { raft_multiplier = 1 }' "$@"
    ;;
node)
    echo node > "$ROLE_FILE"
    exec nginx -c /opt/zedcup/nginx/docker-node.conf "$@"
    ;;
backend)
    echo backend > "$ROLE_FILE"
    exec nginx -c /opt/zedcup/nginx/docker-backend.conf "$@"
    ;;
configure)
    file=${1:-/opt/zedcup/nginx/docker-demo.yaml}
    url="http://$CONSUL_HOST:$CONSUL_PORT"
    tries=0
    until http_ok "$url/v1/status/leader" '"[^"]+"' >/dev/null; do
        tries=$((tries + 1))
        if [ "$tries" -ge 120 ]; then
            echo "configure: no Consul leader at $url after 60 s" >&2
            exit 1
        fi
        sleep 0.5
    done
    exec zedctl --consul "$url" configure "$file"
    ;;
health)
    case "$(cat "$ROLE_FILE" 2>/dev/null || true)" in
    consul) http_ok "http://127.0.0.1:8500/v1/status/leader" '"[^"]+"' ;;
    node) http_ok "http://127.0.0.1:8080/_status?format=json" '"node"' ;;
    backend) http_ok "http://127.0.0.1/_health" '.' ;;
    *) exit 0 ;;
    esac
    ;;
*)
    exec "$role" "$@"
    ;;
esac
