"""LuaOperation and script_pipeline against a real redis-server: a function missing on the
server is loaded and the call sent again; where FUNCTION LOAD is refused the same calls run
by EVALSHA, also when the refusal comes half-way through a pipeline's retry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster_risk.state.functions import LuaOperation, is_missing
from cluster_risk.state.redis import StoreError, load_lua, script_pipeline
from tests.redis.servers import RedisServer

SOURCE = "#!lua\nlocal lib = {twice = function(x) return x .. x end}\n--@body\nreturn lib.twice(KEYS[1] .. ARGV[1])\n"


@pytest.fixture
def admin(standalone: RedisServer) -> Iterator[redis.Redis]:
    client = standalone.client()
    client.function_flush()
    client.script_flush()
    yield client
    client.function_flush()


def _run(client: redis.Redis, op: LuaOperation, n: int) -> list[object]:
    calls = [(op, (1, f"fn:k{i}", str(i))) for i in range(n)]
    return script_pipeline(client, calls, lambda _: op.load(client))


@pytest.mark.redis7
def test_a_missing_function_is_loaded_and_the_calls_sent_again(admin: redis.Redis) -> None:
    op = LuaOperation("demo.lua", SOURCE)
    assert _run(admin, op, 3) == [b"fn:k00fn:k00", b"fn:k11fn:k11", b"fn:k22fn:k22"]
    assert op.functions
    assert [lib[1] for lib in admin.function_list()] == [op.function.encode()]  # [b"library_name", name, ...]
    admin.function_flush()
    assert _run(admin, op, 1) == [b"fn:k00fn:k00"]
    assert admin.info("commandstats")["cmdstat_fcall"]["calls"] >= 5


@pytest.mark.redis7
def test_refused_function_load_falls_back_to_evalsha(admin: redis.Redis, standalone: RedisServer) -> None:
    admin.acl_setuser("nofn", enabled=True, passwords=["+nofn-pw"], keys=["fn:*"], commands=["+@all", "-function"])
    try:
        user = redis.Redis(port=standalone.port, username="nofn", password="nofn-pw")
        op = LuaOperation("demo.lua", SOURCE)
        assert _run(user, op, 2) == [b"fn:k00fn:k00", b"fn:k11fn:k11"]  # FCALL missing, then EVALSHA
        assert not op.functions and op.command(0)[0] == "EVALSHA"
        assert admin.function_list() == []
        user.close()
    finally:
        admin.acl_deluser("nofn")


@pytest.mark.redis7
def test_a_script_error_is_not_taken_for_a_missing_function(admin: redis.Redis) -> None:
    op = LuaOperation("bad.lua", "#!lua\n--@body\nreturn redis.call('NO_SUCH_COMMAND')\n")
    [reply] = _run(admin, op, 1)
    assert isinstance(reply, redis.ResponseError) and not is_missing(reply)


def test_a_source_without_a_body_line_is_refused() -> None:
    with pytest.raises(ValueError, match="--@body"):
        LuaOperation("plain.lua", "#!lua\nreturn 1\n")


def _builtins_library() -> str:
    return (Path(__file__).parents[2] / "lua" / "builtins.lua").read_text(encoding="utf-8").split("\n", 1)[1]


@pytest.mark.parametrize("bind", [True, False])
@pytest.mark.redis7
def test_builtins_are_bound_by_the_first_call_of_a_function(admin: redis.Redis, bind: bool) -> None:
    """builtins.lua's locals stand for the standard libraries: a Function's top level runs at
    FUNCTION LOAD without them, so the body binds them first (the first call binds, later calls
    find them bound); a body that does not fails."""
    source = (
        "#!lua\n"
        + _builtins_library()
        + "local function shout(x) return string.upper(x) .. tonumber('1') end\n--@body\n"
        + ("builtins.bind()\n" if bind else "")
        + "return shout(ARGV[1])\n"
    )
    op = LuaOperation("shout.lua", source)
    op.load(admin)
    assert op.functions  # loaded as a Function: the library's top level needs no global
    if bind:
        assert admin.execute_command(*op.command(0, "abc")) == b"ABC1"
        assert admin.execute_command(*op.command(0, "de")) == b"DE1"
    else:
        with pytest.raises(redis.ResponseError, match="string"):
            admin.execute_command(*op.command(0, "abc"))


def test_every_script_with_libraries_includes_builtins_first(tmp_path: Path) -> None:
    """load_lua refuses a script whose first include is not builtins.lua (its libraries would
    find string, struct, ... nil); every shipped script loads."""
    for path in sorted((Path(__file__).parents[2] / "lua").glob("*.lua")):
        load_lua(path.name)
    (tmp_path / "bad.lua").write_text("#!lua\n--@include keys.lua\nreturn 1\n")
    (tmp_path / "keys.lua").write_text("#!lua\nlocal keys = {}\n")
    with pytest.raises(StoreError, match=r"first include must be builtins\.lua"):
        load_lua("bad.lua", folder=tmp_path)


@pytest.mark.redis7
def test_constants_are_decoded_once_per_server_and_shared_read_only(admin: redis.Redis) -> None:
    """constants.lua: a Function's library keeps what a blob decoded to across calls (the
    same table again: this test marks it to see that), for at most KEEP blobs; by EVALSHA
    every call decodes."""
    library = (Path(__file__).parents[2] / "lua" / "constants.lua").read_text(encoding="utf-8").split("\n", 1)[1]
    body = "local t = constants.decode(ARGV[1], true)\nt.calls = (t.calls or 0) + 1\nreturn {t.calls, t[2]}\n"
    op = LuaOperation("consts.lua", "#!lua\n" + library + "--@body\n" + body)

    def run(operation: LuaOperation, blob: str) -> list[object]:
        [reply] = script_pipeline(admin, [(operation, (0, blob))], lambda _: operation.load(admin))
        assert not isinstance(reply, Exception), reply
        return list(reply)

    assert run(op, '[1,"x"]') == [1, b"x"] and op.functions
    assert run(op, '[1,"x"]') == [2, b"x"]  # the same table: not decoded again
    assert run(op, '[2,"y"]') == [1, b"y"]
    for i in range(8):
        run(op, f'[{i},"z"]')  # past KEEP blobs the memo starts over
    assert run(op, '[1,"x"]') == [1, b"x"]
    plain = LuaOperation("consts.lua", op.source, functions=False)
    assert run(plain, '[1,"x"]') == run(plain, '[1,"x"]') == [1, b"x"]
