"""The repository's tests (tests/ and t/) use the t/ harness's pytest plugin: .t file
collection, the session's Consul (`--consul=dev|real|URL`) and the nginx_server fixture.
It is opt-in: installing zedctl registers nothing with pytest; elsewhere, load it with
`pytest -p zedctl.testnginx.plugin`."""

pytest_plugins = ("zedctl.testnginx.plugin",)
