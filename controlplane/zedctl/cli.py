"""The zedctl command line: a thin click layer over the zedctl library modules."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="zedctl")
def main() -> None:
    """zedcup control plane: validate, apply and inspect configuration in Consul."""


@main.command("dev-consul")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8500, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0 picks a free one).")
@click.option("--acl-token", default=None, help="Require this token on every request.")
@click.option("--data", "data", default=None, type=click.Path(dir_okay=False),
              help="Keep the KV store and indexes in this file across restarts.")
def dev_consul(host: str, port: int, acl_token: str | None, data: str | None) -> None:
    """Run an embedded server that speaks Consul's HTTP API (for development and tests)."""
    from .devconsul import DevConsul

    server = DevConsul(host=host, port=port, acl_token=acl_token, data=data)
    server.serve_forever()
