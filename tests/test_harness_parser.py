"""The t/ harness: parsing of .t files, validation and variable substitution."""

from __future__ import annotations

from pathlib import Path

import pytest
from zedctl.testnginx import ParseError, parse_file, parse_text, substitute
from zedctl.testnginx.config import ConfParts


def one(text: str):
    blocks = parse_text("__DATA__\n" + text, "t/x.t")
    assert len(blocks) == 1
    return blocks[0]


def test_blocks_and_sections_in_file_order() -> None:
    blocks = parse_text(
        "# header, ignored\nuse Test::Nginx::Socket;\n__DATA__\n\n"
        "=== TEST 1: first\n--- config\n    location = /t { return 200; }\n"
        "--- request\nGET /t\n"
        "=== TEST 2: second\n--- request\nGET /u\n",
        "t/x.t",
    )
    assert [b.title for b in blocks] == ["TEST 1: first", "TEST 2: second"]
    assert [b.number for b in blocks] == [1, 2]
    assert blocks[0].get("config") == "    location = /t { return 200; }\n"
    assert blocks[0].get("request") == "GET /t\n"
    assert blocks[1].get("config") is None
    assert blocks[0].line == 5 and blocks[1].line == 10
    assert blocks[0].sections["request"].line == 8


def test_one_line_form_has_no_final_newline() -> None:
    block = one("=== TEST 1: x\n--- error_code: 404\n--- response_body_like:  ^a: b$  \n")
    assert block.get("error_code") == "404"
    assert block.get("response_body_like") == "^a: b$"


def test_blank_lines_trimmed_one_final_newline_kept() -> None:
    block = one("=== TEST 1: x\n--- response_body\n\n\n  ok\n\nsecond\n   \n\n--- request\nGET /\n")
    assert block.get("response_body") == "  ok\n\nsecond\n"


def test_chomp_drops_the_final_newline() -> None:
    block = one("=== TEST 1: x\n--- response_body chomp\nok\n\n--- error_log chomp re\na.c\n")
    assert block.get("response_body") == "ok"
    assert block.sections["error_log"].filters == ("chomp", "re")
    assert block.sections["error_log"].is_regex


def test_crlf_normalised() -> None:
    block = one(
        "=== TEST 1: x\r\n--- response_body\r\nline 1\r\nline 2\r\n\r\n--- request\r\nGET /\r\n"
    )
    assert block.get("response_body") == "line 1\nline 2\n"
    assert block.get("request") == "GET /\n"


def test_empty_section_and_flags() -> None:
    block = one("=== TEST 1: x\n--- SKIP\n--- abort\n--- response_body\n--- request\nGET /\n")
    assert "SKIP" in block and "abort" in block and "ONLY" not in block
    assert block.get("response_body") == ""


def test_end_marker_stops_parsing() -> None:
    blocks = parse_text("__DATA__\n=== TEST 1: a\n--- request\nGET /\n__END__\n=== TEST 2: b\n")
    assert [b.title for b in blocks] == ["TEST 1: a"]


def test_unknown_section_is_an_error_naming_file_block_and_section() -> None:
    with pytest.raises(ParseError) as err:
        parse_text("__DATA__\n=== TEST 1: my block\n--- respnse_body\nok\n", "t/99-x.t")
    msg = str(err.value)
    assert "t/99-x.t:3" in msg
    assert "'TEST 1: my block'" in msg
    assert "'respnse_body'" in msg and "unknown section" in msg
    assert err.value.section == "respnse_body" and err.value.block == "TEST 1: my block"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("=== TEST 1: x\n--- request\nGET /\n--- request\nGET /\n", "duplicate section"),
        ("=== TEST 1: x\n=== TEST 1: x\n", "duplicate block title"),
        ("=== TEST 1: x\n--- response_body eval\nok\n", "unknown filter 'eval'"),
        ("=== TEST 1: x\n--- response_body re\nok\n", "filter 're' applies only to"),
        ("=== TEST 1: x\n--- error_code: 200\nstray text\n", "text after a one-line section"),
        ("===\n", "block without a title"),
    ],
)
def test_malformed_files_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment):
        parse_text("__DATA__\n" + text, "t/x.t")


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("--- workers: two\n", "expected an integer, got 'two'"),
        ("--- nodes: 0\n", "must be >= 1, got 0"),
        ("--- timeout: soon\n", "expected seconds"),
        ("--- error_code: OK\n", "expected an HTTP status, got 'OK'"),
        ("--- error_log re\nunclosed(\n", "bad regex 'unclosed('"),
        ("--- response_body_like: [a-\n", "bad regex"),
        ("--- grep_error_log_out\nx\n", "grep_error_log_out needs grep_error_log"),
        ("--- request\nGET /\n--- pipelined_requests\nGET /\n", "either request or pipelined"),
    ],
)
def test_validation_rejects_bad_values(section: str, fragment: str) -> None:
    block = one("=== TEST 1: x\n" + section)
    with pytest.raises(ParseError) as err:
        block.validate(env={})
    assert fragment in str(err.value)


def test_undefined_variable_is_rejected_by_name() -> None:
    block = one("=== TEST 1: x\n--- config\n    set $a $TEST_NGINX_NO_SUCH_THING;\n")
    with pytest.raises(ParseError) as err:
        block.validate(env={})
    assert "undefined variable $TEST_NGINX_NO_SUCH_THING" in str(err.value)
    assert err.value.section == "config"


def test_defined_variables_pass_validation() -> None:
    block = one(
        "=== TEST 1: x\n--- nodes: 2\n--- config\n"
        "    # $TEST_NGINX_SERVER_PORT $TEST_NGINX_RAND_PORT_12 ${TEST_NGINX_NODE_PORT_2}\n"
        "    # $TEST_ZEDCUP_PREFIX $TEST_NGINX_CONSUL_PORT $TEST_NGINX_FROM_ENV\n"
        "--- response_body_like: ^$TEST_NGINX_SERVER_PORT$\n"
    )
    block.validate(env={"TEST_NGINX_FROM_ENV": "1"})
    assert block.rand_ports() == 12
    assert block.needs_consul
    # node ports exist only up to `nodes`
    block3 = one("=== TEST 1: x\n--- nodes: 2\n--- config\n# $TEST_NGINX_NODE_PORT_3\n")
    with pytest.raises(ParseError, match=r"undefined variable \$TEST_NGINX_NODE_PORT_3"):
        block3.validate(env={})


def test_blocks_without_consul_variables_do_not_need_consul() -> None:
    block = one("=== TEST 1: x\n--- config\n# $TEST_ZEDCUP_PREFIX $TEST_NGINX_SERVER_PORT\n")
    assert not block.needs_consul
    assert block.rand_ports() == 0


PREAMBLE = (
    "# the blocks below share this http_config\n"
    "--- http_config\n"
    "    lua_shared_dict shared 1m;\n"
    "    init_by_lua_block { require('x').init($TEST_NGINX_CONSUL_PORT) }\n"
    "--- config\n"
    "    location = /shared { return 200; }\n"
    "__DATA__\n"
)


def test_the_preamble_goes_in_front_of_each_block_section() -> None:
    first, second, third = parse_text(
        PREAMBLE + "=== TEST 1: own extra\n--- http_config\n    lua_shared_dict mine 1m;\n"
        "=== TEST 2: none\n--- request\nGET /shared\n"
        "=== TEST 3: replaced\n--- http_config own\n    lua_shared_dict alone 1m;\n"
        "--- config own\n    location = /t { return 200; }\n",
        "t/x.t",
    )
    shared = (
        "    lua_shared_dict shared 1m;\n"
        "    init_by_lua_block { require('x').init($TEST_NGINX_CONSUL_PORT) }\n"
    )
    assert first.get("http_config") == shared + "    lua_shared_dict mine 1m;\n"
    assert first.get("config") == second.get("config") == "    location = /shared { return 200; }\n"
    assert second.get("http_config") == shared
    assert first.needs_consul and second.needs_consul  # the preamble's variables count
    assert third.get("http_config") == "    lua_shared_dict alone 1m;\n"
    assert third.get("config") == "    location = /t { return 200; }\n"
    assert not third.needs_consul


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("--- request\nGET /\n__DATA__\n", "a preamble (before __DATA__) may only give"),
        ("--- config\n--- config\n__DATA__\n", "duplicate preamble section"),
        ("__DATA__\n=== TEST 1: x\n--- config own\n", "filter 'own' needs a preamble section"),
        ("--- vars\njust text\n__DATA__\n=== TEST 1: x\n", "expected `NAME = value`"),
        ("__DATA__\n=== TEST 1: x\n--- vars\nOTHER = 1\n", "TEST_NGINX_* or TEST_ZEDCUP_* NAME"),
        ("__DATA__\n=== T\n--- vars\nTEST_NGINX_RAND_PORT_1 = 5\n", "harness's own variable"),
        ("__DATA__\n=== T\n--- vars\nTEST_ZEDCUP_PREFIX = x\n", "harness's own variable"),
    ],
)
def test_bad_preambles_are_rejected(text: str, fragment: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_text(text, "t/x.t")
    assert fragment in str(err.value)
    assert "t/x.t:" in str(err.value)


VARS_PREAMBLE = (
    "--- vars\n"
    "TEST_ZEDCUP_EXTRA =\n"
    "TEST_ZEDCUP_NAME = one\n"
    "--- http_config\n"
    "    init_by_lua_block { init({ name = '$TEST_ZEDCUP_NAME', $TEST_ZEDCUP_EXTRA }) }\n"
    "__DATA__\n"
)


def test_block_vars_change_one_place_of_the_preamble() -> None:
    default, extended, own = parse_text(
        VARS_PREAMBLE + "=== TEST 1: defaults\n--- config\n    # ${TEST_ZEDCUP_NAME}s\n"
        "=== TEST 2: extended\n--- vars\n# a comment\n"
        "TEST_ZEDCUP_EXTRA = port = $TEST_NGINX_RAND_PORT_2,\n"
        "=== TEST 3: own\n--- vars own\nTEST_ZEDCUP_NAME=two\n",
        "t/x.t",
    )
    assert default.get("http_config") == "    init_by_lua_block { init({ name = 'one',  }) }\n"
    assert default.get("config") == "    # ones\n"
    assert extended.get("http_config") == (
        "    init_by_lua_block { init({ name = 'one', port = $TEST_NGINX_RAND_PORT_2, }) }\n"
    )
    assert extended.rand_ports() == 2  # a harness variable in a value counts
    assert "vars" not in default and "vars" not in extended
    with pytest.raises(ParseError) as err:  # `own` drops the defaults: EXTRA is undefined
        own.validate(env={})
    assert "undefined variable $TEST_ZEDCUP_EXTRA" in str(err.value)
    assert "name = 'two'" in (own.get("http_config") or "")


def test_substitute_bare_and_braced_longest_name() -> None:
    variables = {"TEST_NGINX_RAND_PORT_1": "1001", "TEST_NGINX_RAND_PORT_12": "1012"}
    text = "a $TEST_NGINX_RAND_PORT_1 b $TEST_NGINX_RAND_PORT_12 c ${TEST_NGINX_RAND_PORT_1}2 $x"
    assert substitute(text, variables) == "a 1001 b 1012 c 10012 $x"


def test_substitute_undefined_names_it() -> None:
    with pytest.raises(KeyError, match=r"undefined variable \$TEST_NGINX_NOPE in config"):
        substitute("$TEST_NGINX_NOPE", {}, where="config")


def test_seconds_values() -> None:
    block = one("=== TEST 1: x\n--- timeout: 300ms\n--- wait: 1.5s\n")
    assert block.seconds_value("timeout", 5) == pytest.approx(0.3)
    assert block.seconds_value("wait", 0) == pytest.approx(1.5)
    assert one("=== TEST 1: x\n").seconds_value("timeout", 5) == 5


def test_parse_file_reads_the_real_self_test_file() -> None:
    path = Path(__file__).resolve().parent.parent / "t" / "00-harness.t"
    blocks = parse_file(path)
    assert blocks and all(b.title.startswith("TEST ") for b in blocks)
    for b in blocks:
        b.validate()


def test_generated_conf_has_the_documented_shape(tmp_path: Path) -> None:
    parts = ConfParts(
        servroot=tmp_path,
        port=1984,
        repo=Path("/repo"),
        main_config="env FOO;",
        http_config="    lua_shared_dict d 1m;",
        config="    location = /t { return 200; }",
        workers=2,
        modules=("/m/ndk.so", "/m/lua.so"),
        env=["TEST_NGINX_X"],
        run_as_root=True,
    )
    conf = parts.render()
    order = [
        "load_module /m/ndk.so;",
        "load_module /m/lua.so;",
        "worker_processes 2;",
        "master_process on;",
        "daemon off;",
        "user root root;",
        f"error_log {tmp_path}/logs/error.log debug;",
        f"pid {tmp_path}/logs/nginx.pid;",
        "env TEST_NGINX_X;",
        "env FOO;",
        "http {",
        f"client_body_temp_path {tmp_path}/client_body_temp;",
        "access_log off;",
        'lua_package_path "/repo/lua/?.lua;/repo/lua/?/init.lua;/repo/t/lib/?.lua;;";',
        "lua_shared_dict d 1m;",
        "listen 127.0.0.1:1984 reuseport;",
        "server_name localhost;",
        "location = /t { return 200; }",
        "location / {",
        "events {",
    ]
    positions = [conf.index(s) for s in order]
    assert positions == sorted(positions)
    # one worker: no master, no reuseport, no user
    single = ConfParts(servroot=tmp_path, port=1, repo=Path("/r"), run_as_root=True).render()
    assert "master_process off;" in single and "reuseport" not in single
    assert "user " not in single
    # a config with its own `location /` gets no default one
    own = ConfParts(tmp_path, 1, Path("/r"), config="location / { return 204; }").render()
    assert own.count("location /") == 1
