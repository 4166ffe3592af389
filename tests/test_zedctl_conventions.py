"""zedctl follows the consul CLI's conventions: every address form (host:port, http(s)://,
IPv6 in brackets, unix://), CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL(_VERIFY), CONSUL_CACERT,
CONSUL_CLIENT_CERT/KEY, CONSUL_TLS_SERVER_NAME, a hint per Consul error, global options
before or after the command, --version, -o on every printing command, shell completion,
--watch through a Consul outage, and never a traceback. The real `zedctl` binary against
dev-consul and the real Consul.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from zedctl.devconsul.testing import free_port
from zedctl_consuls import (
    ZEDCTL,
    Consul,
    Lines,
    Zedctl,
    acl_token,
    operator_env,
    operator_fixtures,
    start_dev_consul,
    start_real_consul,
    wait_ready,
)

FILE = """\
instances:
  web:
    pools:
      - name: primary
        hosts:
          - { name: web01, host: 10.0.0.1, port: 80 }
          - { name: web02, host: 10.0.0.2, port: 80 }
      - name: dr
        hosts:
          - { name: dr01, host: 10.0.1.1, port: 80 }
"""


# the fixtures: `consul` (module-wide, dev-consul and the real one), `zed` (a fresh prefix)
consul, zed = operator_fixtures()


class _UnixForwarder:
    """A unix socket that forwards each connection to a TCP address (for dev-consul,
    which listens on TCP only)."""

    def __init__(self, path: str, port: int) -> None:
        self.path, self.port = path, port
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


def test_every_consul_cli_address_form(zed: Zedctl, consul: Consul, tmp_path: Path) -> None:
    zed("apply", zed.file(FILE))
    port = consul.url.rsplit(":", 1)[1]
    forms = [f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", f"localhost:{port}"]
    forwarder = None
    if consul.socket is None:  # dev-consul: through a unix socket of our own
        sock = str(tmp_path / "consul.sock")
        forwarder = _UnixForwarder(sock, int(port))
    else:
        sock = consul.socket
    forms.append(f"unix://{sock}")
    try:
        for address in forms:
            assert zed("list", CONSUL_HTTP_ADDR=address).stdout.split()[4] == "web", address
            assert zed("--consul", address, "host", "down", "web", "1", "1").returncode == 0
            zed("host", "up", "web", "1", "1", "--consul", address)
    finally:
        if forwarder is not None:
            forwarder.close()
    err = zed("--consul", f"unix://{tmp_path}/none.sock", "list", code=3).stderr
    assert f"cannot reach Consul at unix://{tmp_path}/none.sock" in err

    # IPv6 in brackets: the real Consul on [::1] too, and a dev-consul on ::1 only.
    if consul.ipv6:
        for address in (f"[::1]:{port}", f"http://[::1]:{port}"):
            assert zed("--consul", address, "list").stdout.split()[4] == "web", address
    try:
        v6 = start_dev_consul(host="::1")
    except (RuntimeError, OSError):
        pytest.skip("no IPv6 loopback here")
    try:
        v6port = v6.url.rsplit(":", 1)[1]
        for address in (f"[::1]:{v6port}", f"http://[::1]:{v6port}"):
            assert zed("--consul", address, "list").stdout == "no instances\n"
        zed("--consul", f"[::1]:{v6port}", "apply", zed.file(FILE))
        tree = zed.env["ZEDCUP_PREFIX"] + "/instances/web"
        assert v6.values(tree)[f"{tree}/pools/1/hosts/1/name"] == "web01"
    finally:
        v6.stop()

    for bad, message in [
        ("http://[::1", "Invalid IPv6 URL"),
        ("::1:8500", "write an IPv6 address in brackets"),
        ("unix://relative.sock", "needs an absolute path"),
        ("ftp://x", "unknown scheme 'ftp'"),
        ("http://x:99999", "Consul address"),
    ]:
        assert message in zed("--consul", bad, "list", code=2).stderr, bad


def test_tokens_from_a_file_and_a_hint_per_acl_error(tmp_path: Path) -> None:
    consuls = [start_dev_consul("--acl-token", "root")]
    try:
        consuls.append(start_real_consul(tmp_path / "acl", acl=True))
    except BaseException:
        consuls[0].stop()
        raise
    try:
        for consul in consuls:
            zed = Zedctl(operator_env(consul, f"op/{uuid.uuid4()}"), tmp_path)
            token_file = zed.file("root\n", "token")
            env = {"CONSUL_HTTP_TOKEN": None, "CONSUL_HTTP_TOKEN_FILE": token_file}
            zed("apply", zed.file(FILE), **env)
            assert "web" in zed("list", **env).stdout
            assert "web" in zed("--token-file", token_file, "list", CONSUL_HTTP_TOKEN=None).stdout
            err = zed(
                "list", code=2, **{**env, "CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "no")}
            ).stderr
            assert f"cannot read the token file {tmp_path / 'no'} (CONSUL_HTTP_TOKEN_FILE)" in err

            # No token, an unknown token, a token without rights: three different hints.
            err = zed("apply", zed.file(FILE), code=3, CONSUL_HTTP_TOKEN=None).stderr
            assert "403" in err and "an ACL token is needed" in err
            err = zed("list", code=3, CONSUL_HTTP_TOKEN="no-such-token").stderr
            assert "403 ACL not found" in err
            assert "Consul does not know the token given (CONSUL_HTTP_TOKEN)" in err
            if consul.kind == "consul":
                weak = acl_token(consul, "zedctl test: no rights")
                # (Consul filters what such a token reads: the write is what is denied.)
                err = zed("apply", zed.file(FILE), code=3, CONSUL_HTTP_TOKEN=weak).stderr
                assert "403 Permission denied" in err and "lacks the rights needed" in err
    finally:
        for consul in consuls:
            consul.stop()


def test_tls_settings_and_a_hint_per_tls_error(tmp_path: Path) -> None:
    consul = start_real_consul(tmp_path / "tls", tls=True)
    try:
        assert consul.https_url is not None
        zed = Zedctl(operator_env(consul, f"op/{uuid.uuid4()}"), tmp_path)
        zed("apply", zed.file(FILE))
        certs = consul.tls
        hostport = consul.https_url.removeprefix("https://")
        plain = consul.url.removeprefix("http://")
        env = {"CONSUL_HTTP_ADDR": hostport}

        err = zed("list", code=3, **env).stderr  # plain HTTP to the HTTPS port
        assert "it serves HTTPS there: use https:// or CONSUL_HTTP_SSL=true" in err
        env["CONSUL_HTTP_SSL"] = "true"
        err = zed("list", code=3, **env).stderr
        assert "certificate verify failed" in err and "--ca-cert / CONSUL_CACERT" in err
        env["CONSUL_CACERT"] = certs["ca.pem"]
        err = zed("list", code=3, **env).stderr  # the certificate names consul.test only
        assert "--tls-server-name / CONSUL_TLS_SERVER_NAME" in err
        env["CONSUL_TLS_SERVER_NAME"] = "consul.test"
        err = zed("list", code=3, **env).stderr  # verify_incoming_https: a client cert
        assert "--client-cert/--client-key (CONSUL_CLIENT_CERT/CONSUL_CLIENT_KEY)" in err
        env["CONSUL_CLIENT_CERT"], env["CONSUL_CLIENT_KEY"] = (
            certs["client.pem"],
            certs["client.key"],
        )
        assert "web" in zed("list", **env).stdout
        # Flags instead of the environment; https:// instead of CONSUL_HTTP_SSL.
        flags = [
            "--consul", consul.https_url, "--ca-cert", certs["ca.pem"],
            "--tls-server-name", "consul.test", "--client-cert", certs["client.pem"],
            "--client-key", certs["client.key"],
        ]  # fmt: skip
        assert "web" in zed(*flags, "list").stdout
        insecure = {**env, "CONSUL_HTTP_SSL_VERIFY": "false", "CONSUL_CACERT": None}
        assert "web" in zed("list", **insecure).stdout
        # TLS against the plain HTTP port.
        err = zed("--consul", f"https://{plain}", "list", code=3).stderr
        assert "does not seem to speak TLS: use http://" in err
        assert "expected true or false" in zed("list", code=2, CONSUL_HTTP_SSL="yes").stderr
    finally:
        consul.stop()


def test_global_options_anywhere_version_and_every_output_format(
    zed: Zedctl, consul: Consul
) -> None:
    path = zed.file(FILE)
    p = zed.env["ZEDCUP_PREFIX"]
    bare = {"CONSUL_HTTP_ADDR": None, "ZEDCUP_PREFIX": None}
    zed("apply", path, "--consul", consul.url, "--prefix", p, **bare)
    assert "web" in zed("list", f"--consul={consul.url}", "--prefix", p, **bare).stdout
    assert "web" in zed("--prefix", p, "list", "--consul", consul.url, **bare).stdout
    assert zed("--version").stdout.startswith("zedctl, version ")
    assert zed("-V").stdout == zed("list", "--version").stdout

    printing = [
        ("list",), ("get", "web"), ("config", "show"), ("export",), ("status",),
        ("events",), ("validate", path), ("diff", path), ("nodes",),
        ("host", "down", "web", "1", "1"), ("host", "up", "web", "1", "1"),
        ("pool", "down", "web", "dr"), ("pool", "up", "web", "dr"),
        ("host", "weight", "web", "1", "2", "3"), ("apply", path),
    ]  # fmt: skip
    # Rendering does not depend on the Consul: every format on dev-consul, JSON on Consul;
    # the commands that change something print one line (table) or a record (json).
    formats = ("table", "wide", "json", "yaml") if consul.kind == "dev-consul" else ("json",)
    for command in printing:
        changes = command[0] in ("host", "pool", "apply")
        for fmt in ("table", "json") if changes and len(formats) > 1 else formats:
            res = zed(*command, "-o", fmt, code=None)
            assert res.returncode in (0, 1), (command, fmt, res.stderr)
            if fmt == "json":
                json.loads(res.stdout)
            elif fmt == "yaml":
                yaml.safe_load(res.stdout)
            else:
                assert res.stdout.strip(), (command, fmt)
    # Paths count from 1, as in keys and commands.
    bad = zed.file(FILE.replace("port: 80 }", "port: 0 }", 2).replace("dr01, host", "dr01, hos"))
    err = zed("validate", bad, code=1).stderr
    assert "instances.web.pools[1].hosts[1].port: must be at least 1, got 0" in err
    assert "instances.web.pools[1].hosts[2].port: must be at least 1, got 0" in err
    assert "instances.web.pools[2].hosts[1].hos: unknown field" in err


def test_the_schema_types_status_codes_hosts_and_global_relations(
    zed: Zedctl, consul: Consul
) -> None:
    p = zed.env["ZEDCUP_PREFIX"]
    ok = FILE.replace("- name: dr\n", "- name: dr\n        status_codes: [500, '50x', 404]\n")
    zed("apply", zed.file(ok))
    stored = consul.values(f"{p}/instances/web")
    assert [stored[f"{p}/instances/web/pools/2/status_codes/{i}"] for i in (1, 2, 3)] == [
        "500", "50x", "404",
    ]  # fmt: skip
    for text, message in [
        (FILE.replace("host: 10.0.0.1", "host: http://10.0.0.1"), "without a scheme"),
        (FILE.replace("host: 10.0.0.1", "host: '10.0.0.1:80'"), "give it in port"),
        ("config: {session_ttl: 20, session_renew_interval: 11}\n",
         "config.session_renew_interval: must be at most session_ttl / 2 (10)"),
        ("config: {session_ttl: 10}\n", "config.session_renew_interval: must be at most"),
    ]:  # fmt: skip
        assert message in zed("apply", zed.file(text), code=1).stderr, text
    assert consul.values(f"{p}/instances/web")[f"{p}/instances/web/pools/1/hosts/1/host"] == (
        "10.0.0.1"
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--consul", "http://[::1", "list"),
        ("--consul", "http://127.0.0.1:1", "status", "--watch", "-o", "nope"),
        ("apply", "/dev/null/x"),
        ("apply", "-"),
        ("diff",),
        ("validate", "/"),
        ("get", "."),
        ("get", "a/b"),
        ("status", ".."),
        ("events", "a/b"),
        ("host", "down", "web", "1", "1", "--reason"),
        ("host", "weight", "web", "1", "1", "1e400"),
        ("pool", "up", "nope", "nope"),
        ("remove", "", "--yes"),
        ("--prefix", "a//b", "list"),
        ("--token-file", "/nonexistent", "list"),
        ("--client-cert", "/nonexistent", "--consul", "https://127.0.0.1:1", "list"),
        ("completion", "tcsh"),
        ("nope",),
    ],
)
def test_never_a_traceback(tmp_path: Path, args: tuple[str, ...]) -> None:
    # Nothing listens at the address: the commands that reach out find no Consul.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{free_port()}"
    zed = Zedctl(env, tmp_path)
    res = zed(*args, code=None, input="{ not yaml: [")
    assert res.returncode in (1, 2, 3), (args, res.returncode, res.stderr)
    assert res.stderr.strip(), args


def test_shell_completion_names_instances_pools_and_hosts(zed: Zedctl, consul: Consul) -> None:
    zed("apply", zed.file(FILE + "  api:\n    pools: [{hosts: [{host: 10.0.2.1, port: 80}]}]\n"))
    assert "_ZEDCTL_COMPLETE" in zed("completion", "bash").stdout

    def complete(line: str) -> list[str]:
        words = line.split(" ")
        res = zed(
            code=0,
            _ZEDCTL_COMPLETE="bash_complete",
            COMP_WORDS=line,
            COMP_CWORD=str(len(words) - 1),
        )
        return [item.split(",", 1)[1] for item in res.stdout.split()]

    assert complete("zedctl status ") == ["api", "web"]
    assert complete("zedctl host down w") == ["web"]
    assert complete("zedctl host down web ") == ["primary", "dr"]
    assert complete("zedctl host down web primary web") == ["web01", "web02"]
    assert complete("zedctl pool down web d") == ["dr"]
    # Completion never fails loudly: Consul unreachable gives nothing.
    res = zed(
        code=0, _ZEDCTL_COMPLETE="bash_complete", COMP_WORDS="zedctl status ", COMP_CWORD="2",
        CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    assert res.stdout.strip() == ""


def test_watch_survives_consul_going_away_and_timestamps_frames(
    consul: Consul, tmp_path: Path
) -> None:
    # A Consul of the same kind that this test may stop and start again on its port.
    if consul.kind == "dev-consul":
        port = free_port()
        own = start_dev_consul("--data", str(tmp_path / "kv.json"), port=port)

        def restart() -> Consul:
            return start_dev_consul("--data", str(tmp_path / "kv.json"), port=port)
    else:
        own = start_real_consul(tmp_path / "watched")
        args = own.proc.args

        def restart() -> Consul:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # type: ignore[arg-type]
            again = Consul("consul", proc, own.url, socket=own.socket)
            wait_ready(again)
            return again

    zed = Zedctl(operator_env(own, f"op/{uuid.uuid4()}"), tmp_path)
    zed("apply", zed.file(FILE))
    watch = subprocess.Popen(
        [str(ZEDCTL), "status", "--watch", "-o", "json"], env=zed.env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    current = own
    out, err = Lines(watch.stdout), Lines(watch.stderr)
    try:
        deadline = time.monotonic() + 60
        first = json.loads(out.next(deadline))
        assert first["instances"][0]["name"] == "web" and first["time"].endswith("Z")
        current.stop()
        err.until("retrying until it answers", deadline)
        assert watch.poll() is None, "the watch must not exit when Consul goes away"
        current = restart()
        err.until("Consul is back; resuming", deadline)
        zed("apply", zed.file(FILE.replace("web01", "web09")))
        frame = out.until('"web09"', deadline).splitlines()[-1]
        assert json.loads(frame)["time"] >= first["time"]
    finally:
        watch.terminate()
        watch.wait(timeout=10)
        current.stop()
