"""TLS and ACL against a real redis-server: a throwaway CA made here with the ``openssl`` CLI,
a server that only speaks TLS (``--port 0``) and demands client certificates, the default
user disabled and a ``risk`` user limited to the ``risk:*`` keys.  The store reaches it
through ``rediss://`` exactly as a worker would, and its password never shows.  The same
ACL user also works on a 3-master Redis Cluster (the cluster client's own commands)."""

from __future__ import annotations

import shutil
import subprocess
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from cluster_risk import RiskEngine, build_config
from cluster_risk.cluster.launcher import wait_until_up
from cluster_risk.remote import RemoteEngine, replay_batched
from cluster_risk.replay import replay_events
from cluster_risk.settings import load_settings
from cluster_risk.state.redis import RedisStore, StoreError
from tests.helpers import load_case, views
from tests.redis.servers import RedisServer, binaries, free_port, has_functions, server_version

PASSWORD = "tls-Acl-pa55-QX7"  # a throwaway for a throwaway server

# What a worker needs and no more (deploy/REDIS.md documents the same line): its own keys
# and channels, reads, writes, scripts and streams; nothing dangerous (FLUSHALL, KEYS,
# CONFIG, DEBUG...) except INFO, which the store asks to tell standalone from cluster.
ACL_RULES = [
    "on",
    f">{PASSWORD}",
    "resetkeys",
    "~risk:*",
    "resetchannels",
    "&risk:*",
    "-@all",
    "+@connection",
    "+@read",
    "+@write",
    "+@scripting",
    "+@stream",
    "+@pubsub",
    "-@dangerous",
    "+info",
    "-script|flush",
    "-script|kill",
    "-function",
    "+function|load",  # apply.lua is loaded as a Redis Function (FCALL is in @scripting)
    # Redis Cluster: the client learns the slot map and reads the topology.
    "+cluster|slots",
    "+cluster|shards",
    "+cluster|nodes",
    "+cluster|info",
    "+cluster|myid",
    "+readonly",
]


# Redis 6.2 has no FUNCTION command and cannot take one subcommand away (``-script|flush`` is an
# error there): the same user takes all of SCRIPT away and gives SCRIPT LOAD back (docs/redis.md).
ACL_RULES_6_2 = [
    rule for rule in ACL_RULES if rule not in {"-script|flush", "-script|kill", "-function", "+function|load"}
] + ["-script", "+script|load"]


def acl_rules() -> list[str]:
    """The documented ACL line for the redis-server on PATH (by capability: Functions or not)."""
    return ACL_RULES if has_functions(*server_version()) else ACL_RULES_6_2


def openssl(*args: str, cwd: Path) -> None:
    tool = shutil.which("openssl")
    if tool is None:
        pytest.fail("the openssl CLI must be on PATH to make the test CA (Debian: apt-get install openssl)")
    subprocess.run([tool, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    folder.mkdir(parents=True, exist_ok=True)
    days = ["-days", "2"]
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", *days,
            "-subj", "/CN=cluster-risk test CA", cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n", encoding="utf-8")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n", encoding="utf-8")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", *days, "-extfile", f"{name}.ext", cwd=folder)  # fmt: skip
    return {name: folder / name for name in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}


class TlsServer:
    """redis-server with TLS only, client certificates required, ACL users from the command line."""

    def __init__(self, folder: Path) -> None:
        server, _ = binaries()
        self.pki = make_pki(folder / "pki")
        self.port = free_port()
        self.log = folder / "redis.log"
        self.process = subprocess.Popen(
            [server, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
             "--save", "", "--appendonly", "no", "--logfile", str(self.log),
             "--tls-cert-file", str(self.pki["server.crt"]), "--tls-key-file", str(self.pki["server.key"]),
             "--tls-ca-cert-file", str(self.pki["ca.crt"]), "--tls-auth-clients", "yes",
             "--user", "default", "off",
             "--user", "risk", *acl_rules()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_until_up(self.process, self.client, self.log, "redis-server with TLS (is it built with TLS?)")
        except OSError as exc:
            self.stop()
            pytest.fail(str(exc))

    def url(self, password: str = PASSWORD, *, client_cert: bool = True, ca: bool = True) -> str:
        query = []
        if ca:
            query.append(f"ssl_ca_certs={self.pki['ca.crt']}")
        if client_cert:
            query += [f"ssl_certfile={self.pki['client.crt']}", f"ssl_keyfile={self.pki['client.key']}"]
        return f"rediss://risk:{quote(password, safe='')}@127.0.0.1:{self.port}/0?{'&'.join(query)}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_server(redis_binaries: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    server = TlsServer(tmp_path_factory.mktemp("tls"))
    yield server
    server.stop()


def assert_hidden(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert quote(PASSWORD, safe="") not in text


def test_conformance_vector_over_tls_as_acl_user(tls_server: TlsServer) -> None:
    settings = load_settings(redis_url=tls_server.url(), num_shards=4)
    store = RedisStore.from_url(settings.redis_url.get_secret_value(), num_shards=settings.num_shards)
    try:
        assert store.client.connection_pool.connection_class is redis.SSLConnection
        case = load_case(3)
        config = build_config(case["config"])
        remote = list(replay_batched(RemoteEngine.from_config(config, store), case["events"], 100, decoded=True))
        local = list(replay_events(RiskEngine.from_config(config), case["events"]))
        assert views(remote) == views(local) == case["expected"]
        assert store.uses_functions == has_functions(*server_version())  # the ACL line allows FUNCTION LOAD
        assert any(key.startswith("risk:{s") for shard in range(4) for key in store.shard_keys(shard))
        assert_hidden(repr(store), repr(store.client), str(store.client.connection_pool), repr(settings))
    finally:
        store.close()


def test_acl_confines_the_user_to_its_keys_and_safe_commands(tls_server: TlsServer) -> None:
    client = tls_server.client()
    try:
        for forbidden in (lambda: client.set("other:key", 1), client.flushall, lambda: client.keys("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                forbidden()
        client.set("risk:probe", 1)
        client.delete("risk:probe")
    finally:
        client.close()


def test_wrong_password_fails_clearly_without_showing_it(tls_server: TlsServer) -> None:
    wrong = "wr0ng-" + PASSWORD[::-1]
    with pytest.raises(StoreError) as caught:
        RedisStore.from_url(tls_server.url(password=wrong))
    message = str(caught.value)
    assert "cannot connect" in message and "invalid username-password pair" in message
    assert "risk:***@127.0.0.1" in message  # which server and user: masked, not hidden
    shown = "".join(traceback.format_exception(caught.value))
    assert wrong not in shown and wrong not in repr(caught.value)
    assert_hidden(shown)


@pytest.mark.parametrize(
    ("kwargs", "client_sees", "server_logs"),
    [
        # The system CAs do not know the test CA: the client refuses the server.
        ({"ca": False}, "certificate verify failed", "alert unknown ca"),
        # Mutual TLS: no client certificate, no session.  With TLS 1.3 the server's alert can
        # race the client's first write, so the client's words vary; the server's log does not.
        ({"client_cert": False}, "cannot connect", "peer did not return a certificate"),
    ],
)
def test_tls_is_checked_both_ways(
    tls_server: TlsServer, kwargs: dict[str, bool], client_sees: str, server_logs: str
) -> None:
    with pytest.raises(StoreError, match=client_sees) as caught:
        RedisStore.from_url(tls_server.url(**kwargs), socket_connect_timeout=3, socket_timeout=3)
    assert_hidden(str(caught.value), "".join(traceback.format_exception(caught.value)))
    assert server_logs in tls_server.log.read_text(errors="replace")


def test_plain_text_is_refused(tls_server: TlsServer) -> None:
    """The server speaks TLS only: a ``redis://`` client gets no answer it can use."""
    url = tls_server.url().replace("rediss://", "redis://", 1).split("?", 1)[0]
    with pytest.raises(StoreError, match="cannot connect") as caught:
        RedisStore.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    assert_hidden(str(caught.value))


def test_acl_user_on_a_redis_cluster(redis_binaries: tuple[str, str], tmp_path: Path) -> None:
    """The documented ACL line is enough for the cluster client and for one Lua call per slot."""
    _, cli = redis_binaries
    rules = acl_rules()
    nodes = [RedisServer(tmp_path / f"node{i}", "--user", "risk", *rules, cluster=True) for i in range(3)]
    try:
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]  # joined by the default user
        create = [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 30
        while not all(n.client().cluster("info").get("cluster_state") == "ok" for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not reach cluster_state:ok"
            time.sleep(0.1)
        url = f"redis://risk:{PASSWORD}@127.0.0.1:{nodes[0].port}/0"
        store = RedisStore.from_url(url, num_shards=4)
        try:
            assert store.is_cluster
            case = load_case(3)
            config = build_config(case["config"])
            remote = replay_batched(RemoteEngine.from_config(config, store), case["events"], 100, decoded=True)
            assert views(remote) == case["expected"]
            if has_functions(*server_version()):
                assert store.uses_functions
                assert all(node.client().function_list() for node in nodes)  # loaded on every primary
            else:  # Redis 6.2: by EVALSHA
                assert not store.uses_functions
                assert any(node.client().info("commandstats").get("cmdstat_evalsha") for node in nodes)
            assert_hidden(repr(store), repr(store.client))
        finally:
            store.close()
    finally:
        for node in nodes:
            node.stop()


@pytest.mark.parametrize(("doc", "rules"), [("deploy/REDIS.md", ACL_RULES), ("docs/redis.md", ACL_RULES_6_2)])
def test_the_documented_acl_lines_are_the_tested_ones(doc: str, rules: list[str]) -> None:
    text = (Path(__file__).parents[2] / doc).read_text(encoding="utf-8")
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith("user risk ")]
    assert line.split()[2:] == [f">{'CHANGE-ME'}" if rule == f">{PASSWORD}" else rule for rule in rules]
