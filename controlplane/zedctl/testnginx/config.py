"""The nginx binary (with Lua) and the nginx.conf generated for a block."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Dynamic modules loaded, in this order, when nginx has no Lua module built in.
LUA_MODULES: tuple[str, ...] = ("ndk_http_module.so", "ngx_http_lua_module.so")
DEFAULT_MODULES_PATH = "/usr/lib/nginx/modules"
#: Environment variables passed through to nginx (`env` lines) by prefix.
ENV_PREFIXES: tuple[str, ...] = ("TEST_NGINX_", "TEST_ZEDCUP_", "ZEDCUP_")

_LUA_BUILTIN_RE = re.compile(r"(lua-nginx-module|ngx_lua|http_lua_module)")
_DEFAULT_LOCATION_RE = re.compile(r"\blocation\s+/\s*\{")


class NginxNotFound(RuntimeError):
    """No nginx with the Lua module could be found or run."""


@dataclass(frozen=True)
class NginxBinary:
    """An nginx that runs Lua: its path, version and the modules it must load."""

    path: str
    version: str
    modules: tuple[str, ...] = ()
    openresty: bool = False


def _version_text(path: str) -> str:
    try:
        proc = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise NginxNotFound(f"cannot run {path} -V: {err}") from None
    return proc.stdout + proc.stderr


def _probe(binary: NginxBinary) -> None:
    """`nginx -t` on a config that runs Lua at init: proves the module really works."""
    with tempfile.TemporaryDirectory(prefix="zedcup-nginx-probe-") as tmp:
        conf = Path(tmp, "nginx.conf")
        lines = [f"load_module {m};" for m in binary.modules]
        lines += [
            f"error_log {tmp}/error.log debug;",
            f"pid {tmp}/nginx.pid;",
            "events { worker_connections 64; }",
            "http {",
            f"    client_body_temp_path {tmp};",
            f"    proxy_temp_path {tmp};",
            f"    fastcgi_temp_path {tmp};",
            f"    uwsgi_temp_path {tmp};",
            f"    scgi_temp_path {tmp};",
            "    access_log off;",
            '    init_by_lua_block { require "ngx.process" }',
            "}",
        ]
        conf.write_text("\n".join(lines) + "\n")
        try:
            proc = subprocess.run(
                [binary.path, "-t", "-p", tmp + "/", "-c", str(conf)],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise NginxNotFound(f"cannot run {binary.path} -t: {err}") from None
        if proc.returncode != 0:
            out = (proc.stdout + proc.stderr).strip()
            raise NginxNotFound(f"{binary.path} cannot run Lua (nginx -t failed): {out}")


def find_nginx(env: Mapping[str, str] | None = None) -> NginxBinary:
    """The nginx to test with: $TEST_NGINX_BINARY, else `openresty`, else `nginx`.

    A plain nginx without the Lua module built in gets the platform's dynamic
    modules (Debian: ndk_http_module.so then ngx_http_lua_module.so). The result is
    proven by running `nginx -t` on a config with Lua. Raises NginxNotFound.
    """
    env = os.environ if env is None else env
    explicit = env.get("TEST_NGINX_BINARY")
    if explicit:
        path = shutil.which(explicit) or explicit
        if not os.access(path, os.X_OK):
            raise NginxNotFound(f"TEST_NGINX_BINARY={explicit!r} is not an executable")
    else:
        path = shutil.which("openresty") or ""
        if not path:
            search = os.pathsep.join([env.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
            path = shutil.which("nginx", path=search) or ""
        if not path:
            raise NginxNotFound("no nginx with Lua: neither openresty nor nginx is on PATH")

    text = _version_text(path)
    m = re.search(r"(?:nginx|openresty) version: (\S+)", text)
    version = m.group(1) if m else "unknown"
    openresty = "openresty" in version.lower()
    modules: tuple[str, ...] = ()
    if not openresty and not _LUA_BUILTIN_RE.search(text):
        m = re.search(r"--modules-path=(\S+)", text)
        modules_dir = Path(m.group(1) if m else DEFAULT_MODULES_PATH)
        found = [modules_dir / name for name in LUA_MODULES]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise NginxNotFound(
                f"{path} ({version}) has no Lua module built in and the dynamic modules "
                f"are missing: {', '.join(missing)} (Debian: apt-get install "
                "libnginx-mod-http-lua; or install OpenResty)"
            )
        modules = tuple(str(p) for p in found)
    binary = NginxBinary(path=path, version=version, modules=modules, openresty=openresty)
    _probe(binary)
    return binary


def env_names(env: Mapping[str, str] | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Names for the `env` lines: TEST_NGINX_*, TEST_ZEDCUP_*, ZEDCUP_* and `extra`."""
    env = os.environ if env is None else env
    names = {n for n in env if n.startswith(ENV_PREFIXES)}
    names.update(extra)
    return sorted(names)


@dataclass
class ConfParts:
    """What goes into a generated nginx.conf.

    `servroot` holds logs/, conf/, html/ and the temp dirs; `port` is the port of the
    test server; `config` goes into that server, `http_config` into http, and
    `main_config` at the top level.
    """

    servroot: Path
    port: int
    repo: Path
    main_config: str = ""
    http_config: str = ""
    config: str = ""
    workers: int = 1
    master_process: bool | None = None  # default: on when workers > 1
    modules: Sequence[str] = ()
    env: Sequence[str] = ()
    title: str = ""
    error_log_level: str = "debug"
    run_as_root: bool = field(default_factory=lambda: hasattr(os, "geteuid") and os.geteuid() == 0)

    @property
    def master(self) -> bool:
        return self.workers > 1 if self.master_process is None else self.master_process

    @property
    def error_log_path(self) -> Path:
        return self.servroot / "logs" / "error.log"

    @property
    def pid_path(self) -> Path:
        return self.servroot / "logs" / "nginx.pid"

    @property
    def html_dir(self) -> Path:
        return self.servroot / "html"

    def render(self) -> str:
        """The nginx.conf text."""
        root = self.servroot
        out: list[str] = []
        if self.title:
            out.append(f"# generated by zedctl.testnginx for: {self.title}")
        out += [f"load_module {m};" for m in self.modules]
        out += [
            f"worker_processes {self.workers};",
            f"master_process {'on' if self.master else 'off'};",
            "daemon off;",
        ]
        if self.master and self.run_as_root:
            # workers would run as nobody and could not read the servroot or the repo
            out.append("user root root;")
        out += [
            f"error_log {self.error_log_path} {self.error_log_level};",
            f"pid {self.pid_path};",
        ]
        out += [f"env {name};" for name in self.env]
        if self.main_config.strip():
            out += ["", "# main_config", self.main_config.rstrip("\n")]
        out += [
            "",
            "http {",
            f"    client_body_temp_path {root}/client_body_temp;",
            f"    proxy_temp_path {root}/proxy_temp;",
            f"    fastcgi_temp_path {root}/fastcgi_temp;",
            f"    uwsgi_temp_path {root}/uwsgi_temp;",
            f"    scgi_temp_path {root}/scgi_temp;",
            "    access_log off;",
        ]
        if "lua_package_path" not in self.http_config:
            repo = self.repo
            path = f"{repo}/lua/?.lua;{repo}/lua/?/init.lua;{repo}/t/lib/?.lua;;"
            out.append(f'    lua_package_path "{path}";')
        if self.http_config.strip():
            out += ["", "    # http_config", self.http_config.rstrip("\n")]
        reuseport = " reuseport" if self.master and self.workers > 1 else ""
        out += [
            "",
            "    server {",
            f"        listen 127.0.0.1:{self.port}{reuseport};",
            "        server_name localhost;",
            "        client_max_body_size 30m;",
        ]
        if self.config.strip():
            out += ["", "        # config", self.config.rstrip("\n")]
        if not _DEFAULT_LOCATION_RE.search(self.config):
            out += [
                "",
                "        location / {",
                f"            root {self.html_dir};",
                "            index index.html index.htm;",
                "        }",
            ]
        out += [
            "    }",
            "}",
            "",
            "events {",
            "    worker_connections 1024;",
            "}",
            "",
        ]
        return "\n".join(out)

    def make_dirs(self) -> None:
        for sub in ("conf", "logs", "html"):
            (self.servroot / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("client_body_temp", "proxy_temp", "fastcgi_temp", "uwsgi_temp", "scgi_temp"):
            (self.servroot / sub).mkdir(parents=True, exist_ok=True)
