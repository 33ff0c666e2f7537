"""Our /api/v1/* against the original's, in the same situation, called the way the OpenWrt LuCI
app calls them (wget through its rpcd script, basic auth in a header, no Origin or Sec-Fetch-*).

One lab, one engarde.yml, two runs: the Go client and server, then ours, each with a fake
WireGuard (lab.udp_tools wg-send / wg-sink) pushing a few hundred datagrams through so that
`last` has a value and the server has sockets. The situation: uplink 0 labelled, uplink 1 with
a dstOverride, uplink 2 excluded in engarde.yml, uplink 3 up without an address. Uplink 0 was
deleted and re-created before either run, so the kernel's interface order (ifindex: up1, up2,
up3, up0) differs from the names' order: the original lists interfaces in the kernel's order.

Compared field by field: paths, methods, status codes, JSON keys (and their order) and value
types, and the values that do not depend on the implementation (statuses, addresses, answers).
Where we differ on purpose, the test names the difference (DIFFERENCES, also listed in
docs/web.md) and checks both sides of it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lab import Lab
from tests.e2e.go_engarde import Answer, full_config, go_binary, start_go, wget
from tests.net.helpers import (
    CLIENT_LISTEN,
    ECHO_ADDR,
    Engarde,
    WgSender,
    WgSink,
    start_engarde,
    wait_until,
    write_config,
)

CLIENT_WEB = "127.0.0.1:9001"
SERVER_WEB = "127.0.0.1:9002"
AUTH = ("admin", "s3cret")
LABEL = "Fibre"

DIFFERENCES = {
    "bad-json": "a body that is not JSON: the original 500 text/plain, ours 400 with a JSON error",
    "unknown-interface": "exclude of an interface that does not exist: the original 200 "
    '{"status": "ok"} (and remembers the name), ours 400 with a JSON error',
    "loopback": "get-list: the original lists lo (idle), ours never lists loopback",
    "method": "GET on a POST-only command: the original 500 (no body), ours 405 with a JSON error",
    "content-type": "reset-exclusions: the original's JSON comes as text/plain, ours as "
    "application/json",
    "host": "a Host that names something else (DNS rebinding): the original answers, ours 421",
    "not-found": "an unknown path or a client command on the server: 404 in both, text/plain "
    "from the original, a JSON error from ours",
}
"""Where our API answers differently from the original's on purpose (docs/web.md lists them)."""


@dataclass
class Run:
    """What one implementation answered, call by call."""

    name: str
    answers: dict[str, Answer] = field(default_factory=dict)

    def json(self, call: str) -> Any:
        return json.loads(self.answers[call].body)


def client_url(path: str) -> str:
    return f"http://{CLIENT_WEB}{path}"


def server_url(path: str) -> str:
    return f"http://{SERVER_WEB}{path}"


def situation(lab: Lab) -> None:
    """Uplink 3 without an address; uplink 0 re-created (the kernel lists it last)."""
    lab.add_uplink(3)
    lab.run(lab.client_ns, "ip", "addr", "flush", "dev", "up3")
    lab.delete_uplink(0)
    lab.add_uplink(0)


def kernel_order(lab: Lab) -> list[str]:
    out = lab.run(lab.client_ns, "ip", "-j", "link", "show").stdout
    return [link["ifname"] for link in sorted(json.loads(out), key=lambda x: x["ifindex"])]


def exercise(
    lab: Lab, run: Run, start: Callable[[str], Engarde], details: Callable[[], str]
) -> None:
    """Start client and server with `start(role)`, push traffic, make every call; stop both."""
    sink = WgSink(lab, ECHO_ADDR)
    server = start("server")
    client = start("client")
    procs = [sink.proc, server.proc, client.proc]

    def logs() -> str:
        return "\n".join([server.log.tail(), client.log.tail(), details()])

    def get_list() -> dict[str, Any]:
        answer = wget(lab, lab.client_ns, client_url("/api/v1/get-list"), auth=AUTH)
        assert answer.status == 200, f"{run.name}: {answer}"
        doc: dict[str, Any] = json.loads(answer.body)
        return doc

    def statuses() -> dict[str, str]:
        return {i["name"]: i["status"] for i in get_list()["interfaces"]}

    want = {"up0": "active", "up1": "active", "up2": "excluded", "up3": "idle"}

    def settled() -> bool:
        now = statuses()
        return {name: now.get(name) for name in want} == want

    wait_until(
        settled,
        f"{run.name}: uplinks 0, 1 active (the original polls interfaces once a second)",
        details=lambda: f"{get_list()}\n{logs()}",
    )
    sender = WgSender(lab, 150, 10, to=CLIENT_LISTEN, grace_ms=300)
    sender.wait_handshake()
    report = sender.wait()
    assert len(report["lost"]) < 150, f"{run.name}: no reply came back: {report}\n{logs()}"

    def call(key: str, url: str, *, ns: str | None = None, **kwargs: Any) -> Answer:
        answer = wget(lab, ns or lab.client_ns, url, **kwargs)
        run.answers[key] = answer
        return answer

    def command(key: str, path: str, interface: str) -> None:
        """A POST the way LuCI's rpcd script builds it: {"interface":"NAME"}, no spaces."""
        body = f'{{"interface":"{interface}"}}'
        call(key, client_url(f"/api/v1/{path}"), post_data=body, auth=AUTH)

    call("client get-list", client_url("/api/v1/get-list"), auth=AUTH)
    call("server get-list", server_url("/api/v1/get-list"), ns=lab.server_ns, auth=AUTH)
    call("no auth", client_url("/api/v1/get-list"))
    call("wrong auth", client_url("/api/v1/get-list"), auth=("admin", "nope"))
    command("exclude up0", "exclude", "up0")
    command("exclude up0 again", "exclude", "up0")
    call("get-list up0 excluded", client_url("/api/v1/get-list"), auth=AUTH)
    command("include up0", "include", "up0")
    command("include up0 again", "include", "up0")
    command("swap up2", "swap-exclusion", "up2")
    command("swap up1", "swap-exclusion", "up1")
    call("get-list swapped", client_url("/api/v1/get-list"), auth=AUTH)
    call("reset (GET, as LuCI)", client_url("/api/v1/reset-exclusions"), auth=AUTH)
    # The original opens (and closes) uplink sockets in its once-a-second interface poll: the
    # statuses after a reset are compared once they settled (at once for ours).
    wait_until(
        settled,
        f"{run.name}: the statuses of the configuration after reset-exclusions",
        details=lambda: f"{get_list()}\n{logs()}",
    )
    call("get-list reset", client_url("/api/v1/get-list"), auth=AUTH)
    call("reset (POST)", client_url("/api/v1/reset-exclusions"), post_data="", auth=AUTH)
    call("bad json", client_url("/api/v1/exclude"), post_data="up0", auth=AUTH)
    command("unknown interface", "exclude", "zz9")
    call("GET exclude", client_url("/api/v1/exclude"), auth=AUTH)
    call("unknown path", client_url("/api/v1/nothing"), auth=AUTH)
    call("foreign host", client_url("/api/v1/get-list"), auth=AUTH, host="rebound.example")
    call(
        "server exclude",
        server_url("/api/v1/exclude"),
        ns=lab.server_ns,
        post_data='{"interface":"up0"}',
        auth=AUTH,
    )
    call("server reset", server_url("/api/v1/reset-exclusions"), ns=lab.server_ns, auth=AUTH)
    for proc in reversed(procs):
        lab.stop(proc)
    assert "Traceback" not in client.log.text() + server.log.text(), logs()


def shape(value: Any) -> Any:
    """The JSON's structure: keys in order, value types (None apart), lists by element."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def test_our_api_v1_answers_like_the_original(lab: Lab) -> None:
    go_binary("engarde-client")
    go_binary("engarde-server")
    situation(lab)
    order = kernel_order(lab)
    assert order.index("up0") > order.index("up3"), order  # names and kernel order differ
    config = write_config(
        lab,
        "engarde.yml",
        **full_config(
            lab,
            client_web=CLIENT_WEB,
            server_web=SERVER_WEB,
            server_dst=ECHO_ADDR,
            excluded=["up2"],
            labels={"up0": LABEL},
            auth=AUTH,
        ),
    )

    def go(role: str) -> Engarde:
        return start_go(lab, role, config)

    def ours(role: str) -> Engarde:
        return start_engarde(lab, role, config)

    theirs, mine = Run("original"), Run("ours")
    exercise(lab, theirs, go, lambda: "")
    exercise(lab, mine, ours, lambda: "")

    def both(call: str) -> tuple[Answer, Answer]:
        return theirs.answers[call], mine.answers[call]

    def report(call: str) -> str:
        a, b = both(call)
        return f"{call}:\n  original: {a}\n  ours:     {b}"

    # -- same status code and same JSON, field by field, for every call LuCI makes -------------
    same_json = [
        "exclude up0",
        "exclude up0 again",
        "include up0",
        "include up0 again",
        "swap up2",
        "swap up1",
        "reset (GET, as LuCI)",
        "reset (POST)",
    ]
    for call in same_json:
        a, b = both(call)
        assert a.status == b.status == 200, report(call)
        assert json.loads(a.body) == json.loads(b.body), report(call)
    assert theirs.json("exclude up0") == {"status": "ok"}
    assert theirs.json("exclude up0 again") == {"status": "already-excluded"}
    assert theirs.json("include up0 again") == {"status": "already-included"}
    for call in ("no auth", "wrong auth"):
        a, b = both(call)
        assert a.status == b.status == 401, report(call)
        assert "engarde" in a.headers.get("www-authenticate", ""), report(call)
        assert "engarde" in b.headers.get("www-authenticate", ""), report(call)

    # -- get-list (client), in each state --------------------------------------------------------
    for call in ("client get-list", "get-list up0 excluded", "get-list swapped", "get-list reset"):
        a, b = both(call)
        assert a.status == b.status == 200, report(call)
        assert a.headers.get("content-type", "").startswith("application/json"), report(call)
        assert b.headers.get("content-type", "").startswith("application/json"), report(call)
        for answer in (a, b):  # LuCI polls get-list: no cache between it and engarde
            assert "no-cache" in answer.headers.get("cache-control", ""), answer.headers
            assert answer.headers.get("pragma") == "no-cache", answer.headers
        doc_a, doc_b = theirs.json(call), mine.json(call)
        # DIFFERENCES["loopback"]: the original lists lo; ours does not.
        lo = [i for i in doc_a["interfaces"] if i["name"] == "lo"]
        assert lo and lo[0]["status"] == "idle", report(call)
        doc_a["interfaces"] = [i for i in doc_a["interfaces"] if i["name"] != "lo"]
        assert [k for k in doc_a] == [k for k in doc_b], report(call)
        for key in ("type", "description", "listenAddress"):
            assert doc_a[key] == doc_b[key], (key, report(call))
        assert isinstance(doc_b["version"], str) and doc_b["version"], report(call)
        # The kernel's order (ifindex), the lab's own veths only.
        names_a = [i["name"] for i in doc_a["interfaces"]]
        names_b = [i["name"] for i in doc_b["interfaces"]]
        assert names_a == names_b == [n for n in order if n.startswith("up")], report(call)
        for ia, ib in zip(doc_a["interfaces"], doc_b["interfaces"], strict=True):
            where = f"{call}, {ia['name']}\n{report(call)}"
            assert list(ia) == list(ib), where  # keys, in order (label only when set)
            for key in ("name", "label", "senderAddress", "dstAddress"):
                assert ia.get(key) == ib.get(key), (key, where)
            if call != "get-list swapped":
                # After a swap the original needs up to a second to open (or close) the socket.
                assert ia["status"] == ib["status"], where
            assert type(ia["last"]) in (int, type(None)), where
            assert type(ib["last"]) in (int, type(None)), where
            if call == "client get-list":  # before any exclusion changed a socket
                assert (ia["last"] is None) == (ib["last"] is None), where
    first = {i["name"]: i for i in mine.json("client get-list")["interfaces"]}
    assert first["up0"]["label"] == LABEL and "label" not in first["up1"], first
    assert isinstance(first["up0"]["last"], int), first  # the echo's replies came back
    assert first["up1"]["dstAddress"] == f"{lab.uplink(1).server_ip}:59402", first
    assert first["up3"]["senderAddress"] == "", first
    excluded = {i["name"]: i["status"] for i in mine.json("get-list up0 excluded")["interfaces"]}
    assert excluded["up0"] == "excluded", excluded
    swapped = {i["name"]: i["status"] for i in mine.json("get-list swapped")["interfaces"]}
    assert swapped["up1"] == "excluded" and swapped["up2"] != "excluded", swapped
    reset = {i["name"]: i["status"] for i in mine.json("get-list reset")["interfaces"]}
    assert reset == {"up0": "active", "up1": "active", "up2": "excluded", "up3": "idle"}, reset

    # -- get-list (server) -----------------------------------------------------------------------
    a, b = both("server get-list")
    assert a.status == b.status == 200, report("server get-list")
    doc_a, doc_b = theirs.json("server get-list"), mine.json("server get-list")
    assert shape({**doc_a, "sockets": doc_a["sockets"][:1]}) == shape(
        {**doc_b, "sockets": doc_b["sockets"][:1]}
    ), report("server get-list")
    for key in ("type", "description", "listenAddress", "dstAddress"):
        assert doc_a[key] == doc_b[key], (key, report("server get-list"))

    def ips(doc: dict[str, Any]) -> set[str]:
        return {s["address"].rsplit(":", 1)[0] for s in doc["sockets"]}

    # The client's active uplinks (0 and 1): the same source addresses on both servers.
    expected = {lab.uplink(0).client_ip, lab.uplink(1).client_ip}
    assert ips(doc_a) == ips(doc_b) == expected, report("server get-list")

    # -- where we differ on purpose -------------------------------------------------------------
    a, b = both("bad json")  # DIFFERENCES["bad-json"]
    assert a.status == 500 and a.headers.get("content-type", "").startswith("text/plain"), a
    assert b.status == 400 and "error" in json.loads(b.body), b
    a, b = both("unknown interface")  # DIFFERENCES["unknown-interface"]
    assert a.status == 200 and json.loads(a.body) == {"status": "ok"}, a
    assert b.status == 400 and "zz9" in json.loads(b.body)["error"], b
    a, b = both("GET exclude")  # DIFFERENCES["method"]
    assert a.status == 500 and b.status == 405 and "error" in json.loads(b.body), (a, b)
    a, b = both("reset (GET, as LuCI)")  # DIFFERENCES["content-type"]
    assert a.headers.get("content-type", "").startswith("text/plain"), a
    assert b.headers.get("content-type", "").startswith("application/json"), b
    a, b = both("foreign host")  # DIFFERENCES["host"]
    assert a.status == 200 and b.status == 421 and "error" in json.loads(b.body), (a, b)
    for call in ("unknown path", "server exclude", "server reset"):  # DIFFERENCES["not-found"]
        a, b = both(call)
        assert a.status == b.status == 404, report(call)
        assert "error" in json.loads(b.body), report(call)
