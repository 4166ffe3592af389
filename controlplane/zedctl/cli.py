"""The zedctl command line: a thin click layer over the zedctl library modules.

Library modules raise `zedctl.errors` exceptions; only this module turns them into
messages and exit codes. Nothing a user types gives a Python traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from click.shell_completion import CompletionItem

from . import __version__, events, nodes, ops
from .configfile import check_document, load_config_file, load_document, to_document
from .consulapi import ConsulKV, ConsulSettings, resolve_settings
from .errors import (
    ConfigSyntaxError,
    ConsulError,
    InvalidConfig,
    NotConfirmed,
    UsageProblem,
    ZedctlError,
)
from .layout import Layout
from .ops import (
    apply_plan,
    list_instances,
    load_global,
    load_instance,
    plan_apply,
    remove_instance,
    set_hold,
    set_host_field,
)
from .render import (
    document,
    events_table,
    fields_table,
    hold_line,
    hosts_table,
    instance_list,
    plan_diff,
    plan_json,
    plan_summary,
    status_table,
    timestamp,
)
from .schema import Schema
from .status import read_status

EXIT_OK = 0
EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_CONSUL = 3

EXIT_CODES = """\b
Exit codes:
  0  success (validate: the file is valid; diff: no change)
  1  invalid configuration, an operation refused (not found, concurrent change,
     not confirmed), a stored config that is invalid (status); diff: changes
  2  usage error (bad option or argument, a file that cannot be read; diff: a bad file)
  3  Consul error (unreachable, ACL, TLS, server error)
"""

# Global options: accepted before or after the subcommand. name -> takes a value.
GLOBAL_OPTIONS = {
    "--consul": True,
    "--token": True,
    "--token-file": True,
    "--prefix": True,
    "--ca-cert": True,
    "--ca-path": True,
    "--client-cert": True,
    "--client-key": True,
    "--tls-server-name": True,
    "--insecure": False,
    "--version": False,
    "-V": False,
}


def exit_code_of(error: ZedctlError) -> int:
    if isinstance(error, ConsulError):
        return EXIT_CONSUL
    if isinstance(error, UsageProblem):
        return EXIT_USAGE
    return EXIT_INVALID


class Failure(click.ClickException):
    """A library error on its way out: message and exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def hoist_globals(args: list[str]) -> list[str]:
    """Global options found after the subcommand, moved before it (`--` ends options)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL_OPTIONS:
            takes_value = GLOBAL_OPTIONS[name]
            if takes_value and "=" not in arg and i + 1 < len(args):
                front += [arg, args[i + 1]]
                i += 2
                continue
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


class _Command(click.Command):
    """Every command's --help ends with the exit codes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)


class _Group(click.Group):
    command_class = _Command
    group_class = type  # subgroups are _Groups too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", EXIT_CODES)
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if ctx.parent is None:
            args = hoist_globals(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        if ctx.parent is not None:
            return super().invoke(ctx)
        try:
            return super().invoke(ctx)
        except ZedctlError as e:
            raise Failure(e.message, exit_code_of(e)) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            raise click.exceptions.Exit(130) from None
        except BrokenPipeError:
            raise click.exceptions.Exit(EXIT_INVALID) from None
        except Exception as e:  # a defect: one line, never a traceback
            raise Failure(
                f"internal error ({type(e).__name__}: {e}); please report it", EXIT_INVALID
            ) from None


@dataclass
class Env:
    """What the global options resolve to; resolved (token file read, address parsed) and
    Consul contacted only by commands that need it."""

    params: dict[str, Any]
    prefix: str
    timeout: float | None = None
    _settings: ConsulSettings | None = field(default=None, repr=False)
    _schema: Schema | None = field(default=None, repr=False)
    _kv: ConsulKV | None = field(default=None, repr=False)

    @property
    def settings(self) -> ConsulSettings:
        if self._settings is None:
            params = self.params
            settings = resolve_settings(
                os.environ,
                address=params.get("address"),
                token=params.get("token"),
                token_file=params.get("token_file"),
                ca_cert=params.get("ca_cert"),
                ca_path=params.get("ca_path"),
                client_cert=params.get("client_cert"),
                client_key=params.get("client_key"),
                tls_server_name=params.get("tls_server_name"),
                insecure=bool(params.get("insecure")),
            )
            if self.timeout is not None:
                settings = dataclasses.replace(settings, timeout=self.timeout)
            self._settings = settings
        return self._settings

    @property
    def schema(self) -> Schema:
        if self._schema is None:
            self._schema = Schema.load()
        return self._schema

    @property
    def layout(self) -> Layout:
        return Layout.for_prefix(self.prefix)

    @property
    def kv(self) -> ConsulKV:
        if self._kv is None:
            self._kv = ConsulKV(self.settings)
        return self._kv


pass_env = click.make_pass_decorator(Env)


def _env_from(params: dict[str, Any], timeout: float | None = None) -> Env:
    prefix = params.get("prefix") or os.environ.get("ZEDCUP_PREFIX") or "zedcup"
    return Env(dict(params), prefix, timeout)


# -- shell completion: names from Consul, nothing on any failure ----------------------------


def _completion_env(ctx: click.Context) -> Env:
    return _env_from(ctx.find_root().params, timeout=2.0)


def _names(ctx: click.Context, what: str) -> list[str]:
    try:
        env = _completion_env(ctx)
        if what == "instance":
            entries = env.kv.get_tree(env.layout.instances)
            return sorted(ops.instance_names(env.layout, entries))
        instance = ctx.params.get("instance")
        if not instance:
            return []
        config = env.schema.effective(
            "instance", load_instance(env.kv, env.layout, env.schema, instance)
        )
        if what == "pool":
            return [p["name"] for p in config["pools"]]
        pool = ctx.params.get("pool")
        for p in config["pools"]:
            if p["name"] == pool:
                return [h["name"] for h in p["hosts"]]
        return []
    except Exception:  # completion never fails loudly
        return []


def _completer(what: str) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    def complete(
        ctx: click.Context, param: click.Parameter, incomplete: str
    ) -> list[CompletionItem]:
        return [CompletionItem(n) for n in _names(ctx, what) if n.startswith(incomplete)]

    return complete


def instance_argument(required: bool = True) -> Callable[[Any], Any]:
    return click.argument("instance", required=required, shell_complete=_completer("instance"))


def pool_argument() -> Callable[[Any], Any]:
    return click.argument("pool", shell_complete=_completer("pool"))


def host_argument() -> Callable[[Any], Any]:
    return click.argument("host_ref", metavar="HOST", shell_complete=_completer("host"))


# -- output ----------------------------------------------------------------------------------

FORMATS = ("table", "wide", "json", "yaml")


def output_option(default: str = "table") -> Callable[[Any], Any]:
    return click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default=default,
        show_default=True,
        help="table, wide (no truncation, more columns), json or yaml.",
    )


def emit_document(value: Any, output: str) -> None:
    click.echo(document(value, "json" if output == "json" else "yaml"), nl=False)


def confirm(question: str, yes: bool, flag: str = "--yes") -> None:
    """Go on when `yes`; ask when on a terminal; otherwise refuse."""
    if yes:
        return
    if sys.stdin.isatty():
        if click.confirm(question, default=False, err=True):
            return
        raise NotConfirmed("not confirmed: nothing written")
    raise NotConfirmed(f"{question} Refused: not on a terminal; give {flag} to confirm")


# -- the group ---------------------------------------------------------------------------------


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="zedctl")
@click.option(
    "--consul",
    "address",
    default=None,
    metavar="ADDRESS",
    help="Consul HTTP address: host:port, http(s)://host:port, [::1]:8500 or "
    "unix:///path [env CONSUL_HTTP_ADDR; default 127.0.0.1:8500].",
)
@click.option("--token", default=None, metavar="TOKEN", help="ACL token [env CONSUL_HTTP_TOKEN].")
@click.option(
    "--token-file",
    default=None,
    metavar="FILE",
    help="File holding the ACL token [env CONSUL_HTTP_TOKEN_FILE].",
)
@click.option(
    "--prefix",
    envvar="ZEDCUP_PREFIX",
    default="zedcup",
    show_default=True,
    help="Consul key prefix of zedcup's keys [env ZEDCUP_PREFIX].",
)
@click.option(
    "--ca-cert", default=None, metavar="FILE", help="CA to verify HTTPS [env CONSUL_CACERT]."
)
@click.option("--ca-path", default=None, metavar="DIR", help="CA directory [env CONSUL_CAPATH].")
@click.option(
    "--client-cert",
    default=None,
    metavar="FILE",
    help="Client certificate [env CONSUL_CLIENT_CERT].",
)
@click.option(
    "--client-key", default=None, metavar="FILE", help="Client key [env CONSUL_CLIENT_KEY]."
)
@click.option(
    "--tls-server-name",
    default=None,
    metavar="NAME",
    help="Name for SNI and the certificate check [env CONSUL_TLS_SERVER_NAME].",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Do not verify an HTTPS Consul's certificate [env CONSUL_HTTP_SSL_VERIFY=false].",
)
@click.pass_context
def main(ctx: click.Context, **params: Any) -> None:
    """zedcup control plane: validate, apply and inspect configuration in Consul.

    Global options go before or after the command; flags beat the environment
    (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL,
    CONSUL_HTTP_SSL_VERIFY, CONSUL_CACERT, CONSUL_CAPATH, CONSUL_CLIENT_CERT,
    CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, ZEDCUP_PREFIX).
    Config files are YAML or JSON (`-` reads stdin):

    \b
      config:              # optional: global settings
        healthcheck_interval: 10
      instances:           # instance name -> config
        web:
          pools:
            - name: primary
              hosts:
                - { name: web01, host: 10.0.0.1, port: 80 }
    """
    ctx.obj = _env_from(params)


# -- files ------------------------------------------------------------------------------


@main.command()
@click.argument("file")
@output_option()
@pass_env
def validate(env: Env, file: str, output: str) -> None:
    """Check FILE against the schema; report every problem with its path and value.

    Exit 0 when valid, 1 when invalid (syntax or schema), 2 when FILE cannot be read.
    """
    document_, source = load_document(file)
    config, problems = check_document(env.schema, document_)
    if problems:
        raise InvalidConfig(source, problems)
    if output in ("json", "yaml"):
        emit_document(
            {
                "file": source,
                "valid": True,
                "instances": sorted(config.instances),
                "global_config": config.global_config is not None,
            },
            output,
        )
        return
    parts = [f"{len(config.instances)} instance{'s' if len(config.instances) != 1 else ''}"]
    if config.global_config is not None:
        parts.append("global config")
    click.echo(f"{source}: valid ({', '.join(parts)})")


def _apply(env: Env, file: str, dry_run: bool, prune: bool, yes: bool, output: str) -> None:
    config = load_config_file(env.schema, file)
    plan = plan_apply(env.kv, env.layout, env.schema, config, prune=prune)
    if plan.removes_all and not dry_run:
        names = ", ".join(plan.stored_instances)
        confirm(f"--prune would remove every stored instance ({names}).", yes)
    warnings: list[str] = []
    if not dry_run:
        warnings = apply_plan(env.kv, plan, env.layout)
    if output in ("json", "yaml"):
        emit_document(plan_json(plan, dry_run), output)
    else:
        if dry_run:
            click.echo(plan_diff(plan), nl=False)
        click.echo(plan_summary(plan, dry_run), nl=False)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _apply_options(func: Any) -> Any:
    func = click.option(
        "--yes", "-y", is_flag=True, help="Confirm a --prune that removes every instance."
    )(func)
    func = click.option(
        "--prune", is_flag=True, help="Also remove instances FILE does not name (and their state)."
    )(func)
    func = click.option(
        "--dry-run", is_flag=True, help="Print the changes by meaning; write nothing."
    )(func)
    func = output_option()(func)
    return func


@main.command()
@click.argument("file")
@_apply_options
@pass_env
def apply(env: Env, file: str, dry_run: bool, prune: bool, yes: bool, output: str) -> None:
    """Make Consul hold FILE: validate it, then write what differs.

    Each instance in FILE whose stored config differs is replaced as a whole; `config:`,
    when given, replaces the global config. Runtime state (down marks, errors, checks,
    operator holds) is kept for every host whose name, host and port are unchanged;
    removed pools and hosts, and hosts whose address changed, lose theirs. Nothing is
    written when anything in FILE is invalid. `zedctl diff FILE` shows what would change.
    """
    _apply(env, file, dry_run, prune, yes, output)


@main.command()
@click.argument("file")
@_apply_options
@pass_env
def configure(env: Env, file: str, dry_run: bool, prune: bool, yes: bool, output: str) -> None:
    """The same as `apply` (the original zedcup's name)."""
    _apply(env, file, dry_run, prune, yes, output)


@main.command()
@click.argument("file")
@click.option("--prune", is_flag=True, help="Also show instances FILE does not name as removed.")
@output_option()
@pass_env
def diff(env: Env, file: str, prune: bool, output: str) -> None:
    """Show how Consul differs from FILE, by meaning: instances, pools and hosts (matched
    by name) and fields added (+), removed (-) or changed (~).

    Exit 0 when there is no change, 1 when there are changes, 2 when FILE is invalid or
    cannot be read, 3 on a Consul error (like `kubectl diff`).
    """
    try:
        config = load_config_file(env.schema, file)
    except (InvalidConfig, ConfigSyntaxError) as e:
        raise Failure(e.message, EXIT_USAGE) from None
    plan = plan_apply(env.kv, env.layout, env.schema, config, prune=prune)
    if output in ("json", "yaml"):
        emit_document(plan_json(plan, True), output)
    else:
        click.echo(plan_diff(plan), nl=False)
    if plan.changed:
        raise click.exceptions.Exit(1)


# -- inspection -------------------------------------------------------------------------


@main.command("list")
@output_option()
@pass_env
def list_cmd(env: Env, output: str) -> None:
    """List the instances stored in Consul."""
    items = list_instances(env.kv, env.layout, env.schema)
    if output in ("json", "yaml"):
        emit_document(
            [
                {"name": i.name, "pools": i.pools, "hosts": i.hosts, "note": i.note or None}
                for i in items
            ],
            output,
        )
        return
    click.echo(instance_list(items), nl=False)


@main.command()
@instance_argument()
@output_option(default="yaml")
@click.option("--raw", is_flag=True, help="Show what is stored (no defaults applied).")
@pass_env
def get(env: Env, instance: str, output: str, raw: bool) -> None:
    """Show INSTANCE's effective config (defaults applied), or with --raw as stored.
    table/wide: one row per host."""
    stored = load_instance(env.kv, env.layout, env.schema, instance)
    effective = env.schema.effective("instance", stored)
    if output in ("table", "wide"):
        click.echo(hosts_table({instance: effective}, output == "wide"), nl=False)
        return
    emit_document(stored if raw else effective, output)


@main.group("config")
def config_group() -> None:
    """The global config."""


@config_group.command("show")
@output_option(default="yaml")
@click.option("--raw", is_flag=True, help="Show what is stored (no defaults applied).")
@pass_env
def config_show(env: Env, output: str, raw: bool) -> None:
    """Show the global config (defaults applied unless --raw)."""
    stored = load_global(env.kv, env.layout, env.schema) or {}
    value = stored if raw else env.schema.effective("global", stored)
    if output in ("table", "wide"):
        click.echo(fields_table(value), nl=False)
        return
    emit_document(value, output)


@main.command()
@output_option(default="yaml")
@pass_env
def export(env: Env, output: str) -> None:
    """Print the whole stored configuration as a file `apply` accepts (yaml or json;
    table/wide: one row per host)."""
    config = ops.export(env.kv, env.layout, env.schema)
    if output in ("table", "wide"):
        effective = {n: env.schema.effective("instance", c) for n, c in config.instances.items()}
        click.echo(hosts_table(effective, output == "wide"), nl=False)
        return
    emit_document(to_document(config), output)


def _follow(env: Env, tree: str, frame: Callable[[], None], wait: float = 10.0) -> None:
    """Call `frame` now and after every change under `tree` (blocking queries), until
    Ctrl-C. Consul going away is said once, retried with back-off, and resumed from."""
    index = 0
    outage: str | None = None
    delay = 0.5
    while True:
        try:
            new_index, _ = env.kv.get_tree_indexed(tree, index=index or None, wait=wait)
            changed = index == 0 or new_index != index
            index = new_index
            if outage is not None:
                click.echo(f"[{timestamp()}] Consul is back; resuming", err=True)
                outage, delay = None, 0.5
            if changed:
                shown = time.monotonic()
                frame()
                pause = 0.2 - (time.monotonic() - shown)
                if pause > 0:
                    time.sleep(pause)  # rate limit: at most five frames a second
        except ConsulError as e:
            if outage is None:
                click.echo(
                    f"[{timestamp()}] {e.message}; retrying until it answers (Ctrl-C stops)",
                    err=True,
                )
                outage = e.message
            index = 0
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@main.command()
@instance_argument(required=False)
@output_option()
@click.option(
    "--watch",
    is_flag=True,
    help="Print again on every change, each frame timestamped (JSON: one document per "
    "line). Survives Consul going away. Ctrl-C stops.",
)
@pass_env
def status(env: Env, instance: str | None, output: str, watch: bool) -> None:
    """Show each host's live state: up or down (and why: the data plane's mark, an
    operator's hold, the config), errors, last error, last check, and which node holds
    the health-check lock.

    ERRORS counts the failures within the pool's error_timeout, as the data plane does.
    A stored config that is invalid is shown with every problem and the hosts of the last
    config zedctl applied (what the nodes keep serving), and status exits 1.
    """

    def show(frame: bool) -> bool:
        report = read_status(env.kv, env.layout, env.schema, instance)
        when = timestamp()
        if output in ("json", "yaml"):
            doc = report.to_json()
            if frame:
                doc = {"time": when, **doc}
            if output == "json" and frame:
                click.echo(json.dumps(doc, ensure_ascii=False))
            else:
                if frame and output == "yaml":
                    click.echo("---")
                emit_document(doc, output)
        else:
            if frame:
                click.clear()
                click.echo(f"{when}  (zedctl status --watch; Ctrl-C stops)")
            click.echo(status_table(report, wide=output == "wide"), nl=False)
        return report.ok

    if not watch:
        if not show(False):
            raise click.exceptions.Exit(EXIT_INVALID)
        return
    tree = env.layout.prefix + "/"
    with contextlib.suppress(KeyboardInterrupt):
        _follow(env, tree, lambda: show(True) and None)


@main.command("events")
@instance_argument(required=False)
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events (Ctrl-C stops).")
@click.option(
    "--last",
    "-n",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="How many past events.",
)
@output_option()
@pass_env
def events_cmd(env: Env, instance: str | None, follow: bool, last: int, output: str) -> None:
    """Host transitions (host_down, host_up, from the data plane) and operator actions
    (admin_host_down/up, admin_pool_down/up, apply, remove), with time, node and reason.

    Read from Consul (<prefix>/events/); --follow waits for new ones with blocking
    queries and survives Consul going away.
    """
    layout = env.layout
    if instance is not None:
        layout.instance(instance)  # checks the name
    _, items = events.read(env.kv, layout, instance)
    shown = items[-last:] if last else []
    wide = output == "wide"

    def emit(batch: list[events.Event], first: bool) -> None:
        if output == "json":
            if follow:
                for e in batch:
                    click.echo(json.dumps(e.to_json(), ensure_ascii=False))
            else:
                emit_document([e.to_json() for e in batch], "json")
        elif output == "yaml":
            if batch or not follow:
                emit_document([e.to_json() for e in batch], "yaml")
        elif follow and not first:
            if batch:
                text = events_table(batch, wide)
                click.echo("\n".join(text.splitlines()[1:]))
        elif batch:
            click.echo(events_table(batch, wide), nl=False)
        elif not follow:
            click.echo("no events\n", nl=False)

    emit(shown, True)
    if not follow:
        return
    seen = {e.key for e in items}
    tree = layout.instance_events(instance) if instance else layout.events

    def frame() -> None:
        fresh = _read_fresh(env, layout, instance, seen)
        emit(fresh, False)

    with contextlib.suppress(KeyboardInterrupt):
        _follow(env, tree, frame, wait=60.0)


def _read_fresh(
    env: Env, layout: Layout, instance: str | None, seen: set[str]
) -> list[events.Event]:
    _, items = events.read(env.kv, layout, instance)
    fresh = [e for e in items if e.key not in seen]
    seen.clear()  # trimmed events drop out; new ones have new keys
    seen.update(e.key for e in items)
    return fresh


@main.command("nodes")
@output_option()
@pass_env
def nodes_cmd(env: Env, output: str) -> None:
    """List the cluster's nodes from the records they publish: live or gone, version,
    checker, configs applied, hosts each sees down, how old each record is; and flag a
    health-check lock holder that is gone."""
    fmt = "json" if output in ("json", "yaml") else "table"
    text = nodes.show(env.kv, env.layout, env.schema, fmt)
    if output == "yaml":
        emit_document(json.loads(text), "yaml")
        return
    click.echo(text, nl=False)


# -- changes ----------------------------------------------------------------------------


@main.group()
def host() -> None:
    """Runtime changes to one host (POOL and HOST by name or 1-based index).

    `down` and `up` set and delete an operator hold in the host's runtime state
    (`<prefix>/state/<inst>/<pool>/<host>/admin_down`): apply keeps it, health checks
    never lift it. `weight` edits the stored config (a later apply of your file
    sets it back). Each is one compare-and-set transaction, applied by every node within
    about a second.
    """


def _emit_hold(change: ops.HoldChange, output: str) -> None:
    if output in ("json", "yaml"):
        emit_document(change.to_json(), output)
    else:
        click.echo(hold_line(change))
    if change.warning:
        click.echo(f"warning: {change.warning}", err=True)


@host.command("down")
@instance_argument()
@pool_argument()
@host_argument()
@click.option("--reason", default="", help="Why (shown by status and events).")
@output_option()
@pass_env
def host_down(env: Env, instance: str, pool: str, host_ref: str, reason: str, output: str) -> None:
    """Take a host out of service until `host up` (an operator hold)."""
    _emit_hold(
        set_hold(env.kv, env.layout, env.schema, instance, pool, host_ref, True, reason), output
    )


@host.command("up")
@instance_argument()
@pool_argument()
@host_argument()
@output_option()
@pass_env
def host_up(env: Env, instance: str, pool: str, host_ref: str, output: str) -> None:
    """Lift the operator hold of `host down` (the config's own `up` applies again)."""
    _emit_hold(set_hold(env.kv, env.layout, env.schema, instance, pool, host_ref, False), output)


@host.command("weight")
@instance_argument()
@pool_argument()
@host_argument()
@click.argument("weight")
@output_option()
@pass_env
def host_weight(
    env: Env, instance: str, pool: str, host_ref: str, weight: str, output: str
) -> None:
    """Set a host's weight in the stored config."""
    change = set_host_field(
        env.kv, env.layout, env.schema, instance, pool, host_ref, "weight", weight
    )
    if output in ("json", "yaml"):
        emit_document(change.__dict__, output)
        return
    old = change.old if change.old is not None else "(default)"
    click.echo(f"{change.instance}/{change.pool}/{change.host}: weight {old} -> {change.new}")


@main.group("pool")
def pool_group() -> None:
    """Drain a pool or give it back (POOL by name or 1-based index).

    `down` sets an operator hold in the pool's runtime state
    (`<prefix>/state/<inst>/<pool>/admin_down`): requests fail over to the next pool;
    apply keeps it; `up` deletes it.
    """


@pool_group.command("down")
@instance_argument()
@pool_argument()
@click.option("--reason", default="", help="Why (shown by status and events).")
@output_option()
@pass_env
def pool_down(env: Env, instance: str, pool: str, reason: str, output: str) -> None:
    """Drain POOL: its hosts are not used until `pool up` (failover to the next pool)."""
    _emit_hold(set_hold(env.kv, env.layout, env.schema, instance, pool, None, True, reason), output)


@pool_group.command("up")
@instance_argument()
@pool_argument()
@output_option()
@pass_env
def pool_up(env: Env, instance: str, pool: str, output: str) -> None:
    """Give a drained POOL back."""
    _emit_hold(set_hold(env.kv, env.layout, env.schema, instance, pool, None, False), output)


@main.command()
@instance_argument()
@click.option("--yes", "-y", is_flag=True, help="Do not ask (needed when not on a terminal).")
@output_option()
@pass_env
def remove(env: Env, instance: str, yes: bool, output: str) -> None:
    """Delete INSTANCE's config and state (no other instance's). Asks on a terminal;
    elsewhere needs --yes."""
    env.layout.instance(instance)  # checks the name before asking
    confirm(f"Remove instance {instance!r}, its config and its state?", yes)
    count, warning = remove_instance(env.kv, env.layout, instance)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if output in ("json", "yaml"):
        emit_document({"removed": instance, "config_keys": count}, output)
        return
    click.echo(f"removed instance {instance} ({count} config keys) and its state")


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(zedctl completion bash)" (zsh, fish
    alike). It completes commands, options, and instance, pool and host names from
    Consul (with the global options given on the line, or the environment)."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(main, {}, "zedctl", "_ZEDCTL_COMPLETE").source())


@main.command("dev-consul")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8500,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option("--acl-token", default=None, help="Require this token on every request.")
@click.option(
    "--data",
    "data",
    default=None,
    type=click.Path(dir_okay=False),
    help="Keep the KV store and indexes in this file across restarts.",
)
def dev_consul(host: str, port: int, acl_token: str | None, data: str | None) -> None:
    """Run an embedded server that speaks Consul's HTTP API (for development and tests)."""
    from .devconsul import DevConsul

    server = DevConsul(host=host, port=port, acl_token=acl_token, data=data)
    server.serve_forever()
