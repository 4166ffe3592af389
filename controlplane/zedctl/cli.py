"""The zedctl command line: a thin click layer over the zedctl library modules."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import click

from . import __version__, nodes, ops
from .configfile import check_document, load_config_file, load_document, to_document
from .consulapi import DEFAULT_ADDRESS, ConsulKV, ConsulSettings
from .errors import InvalidConfig
from .layout import Layout
from .ops import (
    apply_plan,
    list_instances,
    load_global,
    load_instance,
    plan_configure,
    remove_instance,
    set_host_field,
)
from .render import document, instance_list, plan_diff, plan_summary, status_table
from .schema import Schema
from .status import read_status

EXIT_CODES = """\b
Exit codes:
  0  success (validate: the file is valid)
  1  invalid configuration, or an operation refused (not found, concurrent change)
  2  usage error (bad option or argument, a file that cannot be read)
  3  Consul error (unreachable, ACL permission denied, server error)
"""

OUTPUT_DOC = click.Choice(["yaml", "json"])


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


@dataclass
class Env:
    """What the global options resolve to; Consul is only contacted by commands that need it."""

    settings: ConsulSettings
    prefix: str
    _schema: Schema | None = field(default=None, repr=False)
    _kv: ConsulKV | None = field(default=None, repr=False)

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


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="zedctl")
@click.option(
    "--consul",
    "address",
    envvar="CONSUL_HTTP_ADDR",
    default=DEFAULT_ADDRESS,
    show_default=True,
    metavar="URL",
    help="Consul HTTP address: http(s)://host:port or host:port [env CONSUL_HTTP_ADDR].",
)
@click.option(
    "--token",
    envvar="CONSUL_HTTP_TOKEN",
    default=None,
    metavar="TOKEN",
    help="Consul ACL token [env CONSUL_HTTP_TOKEN].",
)
@click.option(
    "--prefix",
    envvar="ZEDCUP_PREFIX",
    default="zedcup",
    show_default=True,
    help="Consul key prefix of zedcup's keys [env ZEDCUP_PREFIX].",
)
@click.option(
    "--ca-cert",
    envvar="CONSUL_CACERT",
    default=None,
    type=click.Path(dir_okay=False),
    help="CA certificate to verify an HTTPS Consul with [env CONSUL_CACERT].",
)
@click.option("--insecure", is_flag=True, help="Do not verify an HTTPS Consul's certificate.")
@click.pass_context
def main(
    ctx: click.Context,
    address: str,
    token: str | None,
    prefix: str,
    ca_cert: str | None,
    insecure: bool,
) -> None:
    """zedcup control plane: validate, apply and inspect configuration in Consul.

    Flags beat the environment. Config files are YAML or JSON (`-` reads stdin):

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
    ctx.obj = Env(
        ConsulSettings(address=address, token=token or None, ca_cert=ca_cert, insecure=insecure),
        prefix,
    )


# -- files ------------------------------------------------------------------------------


@main.command()
@click.argument("file")
@pass_env
def validate(env: Env, file: str) -> None:
    """Check FILE against the schema; report every problem with its path and value.

    Exit 0 when valid, 1 when invalid (syntax or schema), 2 when FILE cannot be read.
    """
    document, source = load_document(file)
    config, problems = check_document(env.schema, document)
    if problems:
        raise InvalidConfig(source, problems)
    parts = [f"{len(config.instances)} instance{'s' if len(config.instances) != 1 else ''}"]
    if config.global_config is not None:
        parts.append("global config")
    click.echo(f"{source}: valid ({', '.join(parts)})")


@main.command()
@click.argument("file")
@click.option("--dry-run", is_flag=True, help="Print the changes as a diff of keys; write nothing.")
@click.option("--prune", is_flag=True, help="Also remove instances FILE does not name (and state).")
@pass_env
def configure(env: Env, file: str, dry_run: bool, prune: bool) -> None:
    """Validate FILE, then write it to Consul.

    Each instance in FILE replaces the stored one as a whole (its runtime state is
    cleared); `config:`, when given, replaces the global config. An instance (or global
    config) already stored exactly as in FILE is left alone, its state kept. Nothing is
    written when anything in FILE is invalid.
    """

    config = load_config_file(env.schema, file)
    plan = plan_configure(env.kv, env.layout, env.schema, config, prune=prune)
    if dry_run:
        click.echo(plan_diff(plan), nl=False)
    else:
        apply_plan(env.kv, plan)
    click.echo(plan_summary(plan, dry_run), nl=False)


# -- inspection -------------------------------------------------------------------------


@main.command("list")
@pass_env
def list_cmd(env: Env) -> None:
    """List the instances stored in Consul."""

    click.echo(instance_list(list_instances(env.kv, env.layout, env.schema)), nl=False)


@main.command()
@click.argument("instance")
@click.option("-o", "--output", type=OUTPUT_DOC, default="yaml", show_default=True)
@click.option("--raw", is_flag=True, help="Show what is stored (no defaults applied).")
@pass_env
def get(env: Env, instance: str, output: str, raw: bool) -> None:
    """Show INSTANCE's effective config (defaults applied), or with --raw as stored."""

    stored = load_instance(env.kv, env.layout, env.schema, instance)
    value = stored if raw else env.schema.effective("instance", stored)
    click.echo(document(value, output), nl=False)


@main.group("config")
def config_group() -> None:
    """The global config."""


@config_group.command("show")
@click.option("-o", "--output", type=OUTPUT_DOC, default="yaml", show_default=True)
@click.option("--raw", is_flag=True, help="Show what is stored (no defaults applied).")
@pass_env
def config_show(env: Env, output: str, raw: bool) -> None:
    """Show the global config (defaults applied unless --raw)."""

    stored = load_global(env.kv, env.layout, env.schema) or {}
    value = stored if raw else env.schema.effective("global", stored)
    click.echo(document(value, output), nl=False)


@main.command()
@click.option("-o", "--output", type=OUTPUT_DOC, default="yaml", show_default=True)
@pass_env
def export(env: Env, output: str) -> None:
    """Print the whole stored configuration as a file `configure` accepts."""

    click.echo(document(to_document(ops.export(env.kv, env.layout, env.schema)), output), nl=False)


@main.command()
@click.argument("instance", required=False)
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--watch",
    is_flag=True,
    help="Print again on every change (JSON: one document per line). Ctrl-C stops.",
)
@pass_env
def status(env: Env, instance: str | None, output: str, watch: bool) -> None:
    """Show each host's live state: up or down, errors, last error, last check,
    and which node holds the health-check lock.

    ERRORS counts the failures within the pool's error_timeout, as the data plane does.
    """

    def show() -> None:
        report = read_status(env.kv, env.layout, env.schema, instance)
        if output == "json":
            indent = None if watch else 2
            click.echo(json.dumps(report.to_json(), indent=indent, ensure_ascii=False))
        else:
            if watch:
                click.clear()
            click.echo(status_table(report), nl=False)

    if not watch:
        show()
        return
    tree = env.layout.prefix + "/"
    index, _ = env.kv.get_tree_indexed(tree)
    try:
        while True:
            shown_at = time.monotonic()
            show()
            new_index, _ = env.kv.get_tree_indexed(tree, index=index, wait="10s")
            # Consul may move the index backwards (restore): start over from 0.
            index = new_index if new_index >= index else 0
            pause = 0.2 - (time.monotonic() - shown_at)
            if pause > 0:
                time.sleep(pause)  # rate limit: at most five updates a second
    except KeyboardInterrupt:
        pass


@main.command("nodes")
@click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@pass_env
def nodes_cmd(env: Env, output: str) -> None:
    """List the cluster's nodes from the records they publish: live or gone, version,
    checker, configs applied, hosts each sees down, how old each record is; and flag a
    health-check lock holder that is gone."""
    click.echo(nodes.show(env.kv, env.layout, env.schema, output), nl=False)


# -- changes ----------------------------------------------------------------------------


@main.group()
def host() -> None:
    """Runtime changes to one host (POOL and HOST by name or 1-based index).

    Each is a single compare-and-set key write; the data plane applies it on every
    node within about a second.
    """


def _host_set(
    env: Env, instance: str, pool: str, host_ref: str, field_name: str, value: object
) -> None:

    change = set_host_field(
        env.kv, env.layout, env.schema, instance, pool, host_ref, field_name, value
    )
    old = change.old if change.old is not None else "(default)"
    click.echo(f"{change.instance}/{change.pool}/{change.host}: {field_name} {old} -> {change.new}")


@host.command("down")
@click.argument("instance")
@click.argument("pool")
@click.argument("host_ref", metavar="HOST")
@pass_env
def host_down(env: Env, instance: str, pool: str, host_ref: str) -> None:
    """Take a host out of service (config key `up` = false)."""
    _host_set(env, instance, pool, host_ref, "up", False)


@host.command("up")
@click.argument("instance")
@click.argument("pool")
@click.argument("host_ref", metavar="HOST")
@pass_env
def host_up(env: Env, instance: str, pool: str, host_ref: str) -> None:
    """Put a host back in service (config key `up` = true)."""
    _host_set(env, instance, pool, host_ref, "up", True)


@host.command("weight")
@click.argument("instance")
@click.argument("pool")
@click.argument("host_ref", metavar="HOST")
@click.argument("weight")
@pass_env
def host_weight(env: Env, instance: str, pool: str, host_ref: str, weight: str) -> None:
    """Set a host's weight."""
    _host_set(env, instance, pool, host_ref, "weight", weight)


@main.command()
@click.argument("instance")
@pass_env
def remove(env: Env, instance: str) -> None:
    """Delete INSTANCE's config and state (no other instance's)."""

    count = remove_instance(env.kv, env.layout, instance)
    click.echo(f"removed instance {instance} ({count} config keys) and its state")


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
