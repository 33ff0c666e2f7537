"""engarde.yml loading: what loads, what it means, and the one-line message for each mistake."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engarde.config import (
    ClientConfig,
    Config,
    ConfigError,
    DstOverride,
    ServerConfig,
    WebManagerConfig,
    describe,
    diff,
    load_config,
    load_config_text,
    parse_host_port,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SCENARIO_1 = """\
client:
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
  excludedInterfaces:
    - "eth3"
    - "wg0"

server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
"""

SCENARIO_2 = """\
client:
  listenAddr: "127.0.0.1:59401"
  dstAddr: "192.168.1.2:59402"
  dstOverrides:
    - ifName: "eth1"
      dstAddr: "192.168.2.2:59402"

server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
"""

# Written the way the Go original's sample is: every key it knows, plus ours.
FULL = """\
---
client:
  description: "My engarde-client instance"
  listenAddr: "127.0.0.1:59401"
  dstAddr: "192.0.2.4:59501"
  writeTimeout: 10
  excludedInterfaces:
    - "Local Area Connection 2"
    - "VirtualBox Host-Only Network"
    - "wg*"
  interfaceLabels:
    eth0: "Fiber"
    wwan0: 4G
  dstOverrides:
    - ifName: "Local Area Connection 4"
      dstAddr: "203.0.113.8:59501"
    - ifName: "wwan*"
      dstAddr: "vpn.example.org:59501"
  webManager:
    listenAddr: "0.0.0.0:9001"
    username: "engarde"
    password: "engarde"
  dropForeignSources: false

server:
  description: "My engarde-server instance"
  listenAddr: "0.0.0.0:59501"
  dstAddr: "127.0.0.1:59301"
  clientTimeout: 30
  writeTimeout: 10
  webManager:
    listenAddr: "0.0.0.0:9001"
    username: "engarde"
    password: "engarde"
  maxClients: 64
"""

MINIMAL_CLIENT = """\
client:
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
"""

MINIMAL_SERVER = """\
server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
"""


def write(tmp_path: Path, text: str, name: str = "engarde.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(text: str, *, role: str | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), source="engarde.yml", role=role)  # type: ignore[arg-type]
    return info.value.problems


def only_problem(text: str, *, role: str | None = None) -> str:
    problems = problems_of(text, role=role)
    assert len(problems) == 1, problems
    return problems[0]


def client_with(extra: str) -> str:
    return MINIMAL_CLIENT + textwrap.indent(textwrap.dedent(extra), "  ")


def server_with(extra: str) -> str:
    return MINIMAL_SERVER + textwrap.indent(textwrap.dedent(extra), "  ")


# ----------------------------------------------------------------------------------------------
# Valid files


def test_readme_scenario_1_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SCENARIO_1))
    assert config.client is not None and config.server is not None
    assert config.client.listenAddr == "127.0.0.1:59401"
    assert config.client.dstAddr == "198.51.100.32:59402"
    assert config.client.excludedInterfaces == ["eth3", "wg0"]
    assert config.client.is_excluded("wg0")
    assert not config.client.is_excluded("eth0")
    assert config.server.listenAddr == "0.0.0.0:59402"
    assert config.server.dstAddr == "127.0.0.1:59301"
    assert config.source == str(tmp_path / "engarde.yml")
    assert config.warnings == []


def test_readme_scenario_2_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, SCENARIO_2), role="client")
    assert config.client is not None
    assert config.client.dstOverrides == [DstOverride(ifName="eth1", dstAddr="192.168.2.2:59402")]
    assert config.client.dst_for("eth1") == "192.168.2.2:59402"
    assert config.client.dst_for("eth0") == "192.168.1.2:59402"


def test_full_file_with_every_key(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    client, server = config.client, config.server
    assert client is not None and server is not None
    assert client.description == "My engarde-client instance"
    assert client.write_timeout_ms == 10
    assert client.label_for("eth0") == "Fiber"
    assert client.label_for("wwan0") == "4G"
    assert client.label_for("eth9") == ""
    assert client.dst_for("Local Area Connection 4") == "203.0.113.8:59501"
    assert client.dst_for("wwan1") == "vpn.example.org:59501"
    assert client.webManager == WebManagerConfig(
        listenAddr="0.0.0.0:9001", username="engarde", password="engarde"
    )
    assert client.webManager.auth_enabled
    assert client.dropForeignSources is False
    assert server.client_timeout_s == 30.0
    assert server.write_timeout_ms == 10
    assert server.maxClients == 64
    assert server.webManager is not None and server.webManager.auth_enabled


def test_defaults() -> None:
    config = load_config_text(MINIMAL_CLIENT + MINIMAL_SERVER)
    client, server = config.client, config.server
    assert client is not None and server is not None
    assert client.description == ""
    assert client.writeTimeout == 10 and client.write_timeout_ms == 10
    assert client.excludedInterfaces == []
    assert client.interfaceLabels == {}
    assert client.dstOverrides == []
    assert client.webManager is None
    assert client.dropForeignSources is True
    assert server.description == ""
    assert server.client_timeout_s == 30.0
    assert server.write_timeout_ms == 10
    assert server.webManager is None
    assert server.maxClients == 1024
    assert config.source == "<string>"


def test_one_section_is_enough() -> None:
    assert load_config_text(MINIMAL_CLIENT).server is None
    assert load_config_text(MINIMAL_SERVER).client is None


def test_models_are_immutable() -> None:
    config = load_config_text(MINIMAL_CLIENT)
    assert config.client is not None
    with pytest.raises(ValueError):
        config.client.dstAddr = "192.0.2.1:1"


def test_models_can_be_built_in_code() -> None:
    client = ClientConfig(listenAddr="127.0.0.1:59401", dstAddr="198.51.100.32:59402")
    assert client.write_timeout_ms == 10
    server = ServerConfig.model_validate(
        {"listenAddr": ":59402", "dstAddr": "127.0.0.1:59301", "clientTimeout": "2m"}
    )
    assert server.client_timeout_s == 120.0
    assert Config(client=client).source == "<string>"


def test_unquoted_scalars_are_strings_like_the_original() -> None:
    # The Go original reads these as the text written; YAML 1.1 would make 0123 an octal 83.
    config = load_config_text(
        client_with(
            """\
            description: 2024
            webManager:
              listenAddr: "127.0.0.1:9001"
              username: yes
              password: 0123
            """
        )
    )
    assert config.client is not None and config.client.webManager is not None
    assert config.client.description == "2024"
    assert config.client.webManager.username == "yes"
    assert config.client.webManager.password == "0123"
    assert type(config.client.webManager.password) is str


def test_empty_keys_take_their_defaults() -> None:
    config = load_config_text(
        client_with(
            """\
            excludedInterfaces: []
            dstOverrides: []
            webManager:
            """
        )
    )
    assert config.client is not None
    assert config.client.webManager is None
    assert config.client.excludedInterfaces == []


def test_web_manager_with_empty_listen_addr_is_off() -> None:
    # The original's sample: "Leave it empty to disable the management webserver."
    config = load_config_text(
        server_with(
            """\
            webManager:
              listenAddr: ""
              username: "engarde"
              password: "engarde"
            """
        )
    )
    assert config.server is not None and config.server.webManager is None


@pytest.mark.parametrize(
    ("username", "password", "auth"),
    [("a", "b", True), ("a", "", False), ("", "b", False), ("", "", False)],
)
def test_auth_needs_both(username: str, password: str, auth: bool) -> None:
    web = WebManagerConfig(listenAddr="127.0.0.1:9001", username=username, password=password)
    assert web.auth_enabled is auth


def test_half_credentials_warn() -> None:
    config = load_config_text(
        client_with(
            """\
            webManager:
              listenAddr: "127.0.0.1:9001"
              password: "secret"
            """
        ),
        source="engarde.yml",
    )
    assert config.warnings == [
        "engarde.yml: client.webManager: only the password is set, so there is NO "
        "authentication (set both username and password)"
    ]


# ----------------------------------------------------------------------------------------------
# Interfaces: exclusion, overrides, labels


def test_glob_exclusion() -> None:
    client = ClientConfig(
        listenAddr="127.0.0.1:59401",
        dstAddr="198.51.100.32:59402",
        excludedInterfaces=["wg*", "eth3", "veth?", "Ethernet [2]"],
    )
    assert client.is_excluded("wg0")
    assert client.is_excluded("wg-home")
    assert client.is_excluded("eth3")
    assert client.is_excluded("veth1")
    assert client.is_excluded("Ethernet [2]")  # exact name wins over the glob reading
    assert not client.is_excluded("eth0")
    assert not client.is_excluded("eth30")
    assert not client.is_excluded("veth10")
    assert not client.is_excluded("WG0")  # case-sensitive, like interface names


def test_dst_for_first_match_wins() -> None:
    client = ClientConfig(
        listenAddr="127.0.0.1:59401",
        dstAddr="198.51.100.32:59402",
        dstOverrides=[
            DstOverride(ifName="wwan0", dstAddr="203.0.113.1:59402"),
            DstOverride(ifName="wwan*", dstAddr="203.0.113.2:59402"),
            DstOverride(ifName="wwan1", dstAddr="203.0.113.3:59402"),
        ],
    )
    assert client.dst_for("wwan0") == "203.0.113.1:59402"
    assert client.dst_for("wwan1") == "203.0.113.2:59402"  # the glob comes first
    assert client.dst_for("eth0") == "198.51.100.32:59402"


def test_label_for() -> None:
    client = ClientConfig(
        listenAddr="127.0.0.1:59401",
        dstAddr="198.51.100.32:59402",
        interfaceLabels={"eth0": "Fiber", "eth0.100": "VLAN 100"},
    )
    assert client.label_for("eth0") == "Fiber"
    assert client.label_for("eth0.100") == "VLAN 100"
    assert client.label_for("eth1") == ""


def test_unreachable_override_warns() -> None:
    config = load_config_text(
        client_with(
            """\
            dstOverrides:
              - {ifName: eth1, dstAddr: "203.0.113.1:59402"}
              - {ifName: eth1, dstAddr: "203.0.113.2:59402"}
            """
        ),
        source="engarde.yml",
    )
    assert config.warnings == [
        "engarde.yml: client.dstOverrides[1]: never used: dstOverrides[0] already matches "
        "'eth1' (the first match wins)"
    ]


# ----------------------------------------------------------------------------------------------
# HOST:PORT


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:59402", ("1.2.3.4", 59402)),
        ("host.example:59402", ("host.example", 59402)),
        ("[::1]:59402", ("::1", 59402)),
        ("[2001:db8::1]:1", ("2001:db8::1", 1)),
        ("[fe80::1%eth0]:59402", ("fe80::1%eth0", 59402)),
        (":59402", ("", 59402)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
        ("localhost:9001", ("localhost", 9001)),
    ],
)
def test_parse_host_port_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.2.3.4", "expected HOST:PORT, got '1.2.3.4'"),
        ("", "expected HOST:PORT, got ''"),
        ("1.2.3.4:", "expected HOST:PORT: the port is missing, got '1.2.3.4:'"),
        ("1.2.3.4:0", "the port must be from 1 to 65535, got '1.2.3.4:0'"),
        ("1.2.3.4:65536", "the port must be from 1 to 65535, got '1.2.3.4:65536'"),
        ("1.2.3.4:http", "the port must be a number from 1 to 65535, got '1.2.3.4:http'"),
        ("1.2.3.4:-1", "the port must be a number from 1 to 65535, got '1.2.3.4:-1'"),
        (
            "::1:59402",
            "expected HOST:PORT: an IPv6 address needs brackets, like '[::1]:59402', "
            "got '::1:59402'",
        ),
        ("[::1]", "expected HOST:PORT: missing ':PORT' after ']', got '[::1]'"),
        ("[::1:59402", "expected HOST:PORT: missing ']' after the IPv6 address, got '[::1:59402'"),
        (
            "[1.2.3.4]:5",
            "expected HOST:PORT: '1.2.3.4' in brackets is not an IPv6 address, got '[1.2.3.4]:5'",
        ),
        (
            "1.2.3.256:5",
            "expected HOST:PORT: '1.2.3.256' is not a valid IPv4 address, got '1.2.3.256:5'",
        ),
        (
            "bad/host:5",
            "expected HOST:PORT: 'bad/host' is not a valid IP address or host name, "
            "got 'bad/host:5'",
        ),
        (" 1.2.3.4:5", "expected HOST:PORT without spaces, got ' 1.2.3.4:5'"),
    ],
)
def test_parse_host_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_host_port(text)
    assert str(info.value) == message


def test_parse_host_port_names_what() -> None:
    with pytest.raises(ValueError, match=r"^--listen: expected HOST:PORT, got 'x'$"):
        parse_host_port("x", what="--listen")


def test_parse_host_port_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="got 59402"):
        parse_host_port(59402)  # type: ignore[arg-type]


def test_ipv6_addresses_in_config() -> None:
    config = load_config_text(
        """\
client:
  listenAddr: "[::1]:59401"
  dstAddr: "[2001:db8::32]:59402"
server:
  listenAddr: "[::]:59402"
  dstAddr: "[::1]:59301"
"""
    )
    assert config.client is not None and config.server is not None
    assert parse_host_port(config.client.dstAddr) == ("2001:db8::32", 59402)
    assert parse_host_port(config.server.listenAddr) == ("::", 59402)


def test_unquoted_ipv6_gets_a_hint() -> None:
    problem = only_problem(
        """\
        client:
          listenAddr: [::1]:59401
        """
    )
    assert problem.startswith("engarde.yml: line 2, column 16: YAML syntax error: ")
    assert problem.endswith('; put IPv6 addresses in quotes, like "[::1]:59402"')


def test_bad_addresses_in_config() -> None:
    problems = problems_of(
        """\
        client:
          listenAddr: "vpn.example.org:59401"
          dstAddr: "1.2.3.4"
          webManager:
            listenAddr: "0.0.0.0:99999"
        server:
          listenAddr: "0.0.0.0:59402:1"
          dstAddr: "::1:59301"
        """
    )
    assert problems == [
        "engarde.yml: client.listenAddr: a listen address needs an IP address (or nothing, as "
        "in ':59402', for all addresses), not the host name 'vpn.example.org', got "
        "'vpn.example.org:59401'",
        "engarde.yml: client.dstAddr: expected HOST:PORT, got '1.2.3.4'",
        "engarde.yml: client.webManager.listenAddr: the port must be from 1 to 65535, "
        "got '0.0.0.0:99999'",
        "engarde.yml: server.listenAddr: expected HOST:PORT: an IPv6 address needs brackets, "
        "like '[::1]:59402', got '0.0.0.0:59402:1'",
        "engarde.yml: server.dstAddr: expected HOST:PORT: an IPv6 address needs brackets, "
        "like '[::1]:59402', got '::1:59301'",
    ]


def test_go_compatible_address_forms() -> None:
    config = load_config_text(
        """\
        client:
          listenAddr: "localhost:59401"
          dstAddr: ":59402"
        """.replace("        ", ""),
        role="client",
    )
    assert config.client is not None
    assert config.client.listenAddr == "localhost:59401"
    assert config.client.dstAddr == ":59402"


def test_host_names_allowed_for_destinations() -> None:
    config = load_config_text(
        """\
        client:
          listenAddr: ":59401"
          dstAddr: "vpn.example.org:59402"
          dstOverrides:
            - {ifName: eth1, dstAddr: "vpn2.example.org:59402"}
        """
    )
    assert config.client is not None
    assert config.client.dst_for("eth1") == "vpn2.example.org:59402"


# ----------------------------------------------------------------------------------------------
# Timeouts


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("10", 10),
        ("25", 25),
        ("0", 10),
        ('"15"', 15),
        ('"10ms"', 10),
        ('"1s"', 1000),
        ('"1.5s"', 1500),
        ('"1.1s"', 1100),
        ('"2m"', 120000),
        ('"1m30s"', 90000),
        ('"10 ms"', 10),
        ('"250us"', 1),  # sub-millisecond rounds up, never down to 0 (= the default)
        ('"1.2ms"', 2),
        ('"0s"', 10),
        ("2.5", 3),
    ],
)
def test_write_timeout_values(value: str, ms: int) -> None:
    config = load_config_text(client_with(f"writeTimeout: {value}\n"))
    assert config.client is not None
    assert config.client.write_timeout_ms == ms
    assert config.client.writeTimeout == ms


@pytest.mark.parametrize("value", ["-1", "-100", '"-1s"', "-0.5"])
def test_negative_write_timeout_disables(value: str) -> None:
    config = load_config_text(server_with(f"writeTimeout: {value}\n"))
    assert config.server is not None
    assert config.server.write_timeout_ms is None


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("fast", "'fast'"),
        ("true", "true"),
        ('"10 parsecs"', "'10 parsecs'"),
        ('"1s2"', "'1s2'"),
        ('"ms"', "'ms'"),
        ("[10]", "[10]"),  # unquoted numbers are shown unquoted
        (".inf", ".inf"),
    ],
)
def test_bad_write_timeout(value: str, shown: str) -> None:
    assert only_problem(client_with(f"writeTimeout: {value}\n")) == (
        "engarde.yml: client.writeTimeout: expected milliseconds or a duration like '10ms', "
        f"'1.5s', '2m', got {shown}"
    )


def test_write_timeout_rejects_bool_in_code() -> None:
    with pytest.raises(ValueError):
        ClientConfig(listenAddr=":1", dstAddr="192.0.2.1:1", writeTimeout=True)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        ("0", 30.0),
        ("45", 45.0),
        ('"45s"', 45.0),
        ('"2m"', 120.0),
        ('"1500ms"', 1.5),
        ("2.5", 2.5),
        ('"1h"', 3600.0),
    ],
)
def test_client_timeout_values(value: str, seconds: float) -> None:
    config = load_config_text(server_with(f"clientTimeout: {value}\n"))
    assert config.server is not None
    assert config.server.client_timeout_s == seconds


def test_negative_client_timeout() -> None:
    assert only_problem(server_with("clientTimeout: -5\n")) == (
        "engarde.yml: server.clientTimeout: must not be negative (0 means the default, "
        "30 seconds), got -5"
    )


def test_bad_client_timeout() -> None:
    assert only_problem(server_with("clientTimeout: soon\n")) == (
        "engarde.yml: server.clientTimeout: expected seconds or a duration like '45s', '2m', "
        "'1500ms', got 'soon'"
    )


# ----------------------------------------------------------------------------------------------
# Other values


@pytest.mark.parametrize(("value", "expected"), [("false", False), ("no", False), ("on", True)])
def test_drop_foreign_sources(value: str, expected: bool) -> None:
    config = load_config_text(client_with(f"dropForeignSources: {value}\n"))
    assert config.client is not None and config.client.dropForeignSources is expected


def test_bad_drop_foreign_sources() -> None:
    assert only_problem(client_with("dropForeignSources: sometimes\n")) == (
        "engarde.yml: client.dropForeignSources: expected true or false, got 'sometimes'"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be at least 1, got 0"),
        ("-3", "must be at least 1, got -3"),
        ("many", "expected a whole number, got 'many'"),
        ("1.5", "expected a whole number, got 1.5"),
        ("true", "expected a whole number, got true"),
    ],
)
def test_bad_max_clients(value: str, message: str) -> None:
    assert only_problem(server_with(f"maxClients: {value}\n")) == (
        f"engarde.yml: server.maxClients: {message}"
    )


def test_wrong_types() -> None:
    problems = problems_of(
        client_with(
            """\
            description: [a, b]
            excludedInterfaces: wg0
            interfaceLabels: [eth0]
            dstOverrides: {ifName: eth1}
            webManager: "0.0.0.0:9001"
            """
        )
    )
    assert problems == [
        "engarde.yml: client.description: expected a string, got ['a', 'b']",
        "engarde.yml: client.excludedInterfaces: expected a list, got 'wg0'",
        "engarde.yml: client.interfaceLabels: expected a mapping (key: value lines), got ['eth0']",
        "engarde.yml: client.dstOverrides: expected a list, got {'ifName': 'eth1'}",
        "engarde.yml: client.webManager: expected a mapping (key: value lines), got '0.0.0.0:9001'",
    ]


def test_bad_list_entries() -> None:
    problems = problems_of(
        client_with(
            """\
            excludedInterfaces:
              - "wg0"
              - ""
              - [eth1]
            interfaceLabels:
              eth0.100: {name: x}
            dstOverrides:
              - eth1
              - ifName: ""
                dstAddr: "203.0.113.1:59402"
            """
        )
    )
    assert problems == [
        "engarde.yml: client.excludedInterfaces[2]: expected a string, got ['eth1']",
        "engarde.yml: client.interfaceLabels['eth0.100']: expected a string, got {'name': 'x'}",
        "engarde.yml: client.dstOverrides[0]: expected a mapping (key: value lines), got 'eth1'",
        "engarde.yml: client.dstOverrides[1].ifName: must not be empty, got ''",
    ]


def test_empty_interface_name_in_exclusions() -> None:
    assert only_problem(client_with('excludedInterfaces: ["wg0", ""]\n')) == (
        "engarde.yml: client.excludedInterfaces: interface names must not be empty, got ['wg0', '']"
    )


# ----------------------------------------------------------------------------------------------
# Keys


def test_unknown_key_did_you_mean() -> None:
    problems = problems_of(
        """\
        client:
          listenaddr: "127.0.0.1:59401"
          dstaddr: "198.51.100.32:59402"
          excludedInterface: [wg0]
          writeTimout: 10
          dstOverrides:
            - ifname: eth1
              dstAddr: "203.0.113.1:59402"
          webManager:
            listenAddr: "127.0.0.1:9001"
            user: admin
        """
    )
    assert problems == [
        "engarde.yml: client.listenaddr: unknown key, did you mean 'listenAddr'?",
        "engarde.yml: client.dstaddr: unknown key, did you mean 'dstAddr'?",
        "engarde.yml: client.excludedInterface: unknown key, did you mean 'excludedInterfaces'?",
        "engarde.yml: client.writeTimout: unknown key, did you mean 'writeTimeout'?",
        "engarde.yml: client.dstOverrides[0].ifname: unknown key, did you mean 'ifName'?",
        "engarde.yml: client.webManager.user: unknown key, did you mean 'username'?",
    ]


def test_unknown_key_without_suggestion() -> None:
    assert only_problem(client_with("colour: blue\n")) == (
        "engarde.yml: client.colour: unknown key"
    )


def test_key_of_the_other_section() -> None:
    assert only_problem(client_with("clientTimeout: 30\n")) == (
        "engarde.yml: client.clientTimeout: unknown key: 'clientTimeout' belongs in the "
        "server section"
    )
    assert only_problem(server_with("excludedInterfaces: [wg0]\n")) == (
        "engarde.yml: server.excludedInterfaces: unknown key: 'excludedInterfaces' belongs in "
        "the client section"
    )


def test_unknown_top_level_keys() -> None:
    problems = problems_of(
        MINIMAL_CLIENT
        + """\
Server:
  listenAddr: ":59402"
listenAddr: "127.0.0.1:59401"
logging: debug
"""
    )
    assert problems == [
        "engarde.yml: Server: unknown key, did you mean 'server'?",
        "engarde.yml: listenAddr: unknown key: section keys go under 'client:' or 'server:'",
        "engarde.yml: logging: unknown key",
    ]


def test_keys_are_case_sensitive() -> None:
    assert only_problem(server_with("MaxClients: 5\n")) == (
        "engarde.yml: server.MaxClients: unknown key, did you mean 'maxClients'?"
    )


def test_missing_required_keys() -> None:
    problems = problems_of(
        """\
        client:
          description: "no addresses"
          dstOverrides:
            - ifName: eth1
        server:
        """
    )
    assert problems == [
        "engarde.yml: client.dstOverrides[0].dstAddr: required key missing",
        "engarde.yml: client.listenAddr: required key missing",
        "engarde.yml: client.dstAddr: required key missing",
        "engarde.yml: server.listenAddr: required key missing",
        "engarde.yml: server.dstAddr: required key missing",
    ]


def test_required_key_present_but_empty() -> None:
    assert only_problem("client:\n  listenAddr: \n  dstAddr: '192.0.2.1:1'\n") == (
        "engarde.yml: client.listenAddr: value missing"
    )


def test_duplicate_keys() -> None:
    problems = problems_of(
        """\
        client:
          listenAddr: "127.0.0.1:59401"
          dstAddr: "198.51.100.32:59402"
          dstAddr: "198.51.100.33:59402"
        """
    )
    assert problems == [
        "engarde.yml: line 4: duplicate key 'dstAddr' (first on line 3); only one may be given"
    ]


def test_yaml_merge_keys_are_not_duplicates() -> None:
    config = load_config_text(
        """\
client: &shared
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
  writeTimeout: 20
server:
  <<: *shared
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
"""
    )
    assert config.server is not None
    assert config.server.listenAddr == "0.0.0.0:59402"
    assert config.server.write_timeout_ms == 20


# ----------------------------------------------------------------------------------------------
# Files, YAML, sections, roles


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_file_name_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, MINIMAL_CLIENT.replace("198.51.100.32:59402", "1.2.3.4"))
    with pytest.raises(ConfigError) as info:
        load_config("engarde.yml")
    assert str(info.value) == "engarde.yml: client.dstAddr: expected HOST:PORT, got '1.2.3.4'"


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert info.value.problems == [f"{tmp_path}: cannot read: Is a directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "engarde.yml"
    path.write_bytes(b"client:\n  description: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [f"{path}: line 2: cannot read: not UTF-8 text"]


def test_utf8_bom_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "engarde.yml"
    path.write_bytes(b"\xef\xbb\xbf" + MINIMAL_SERVER.encode())
    assert load_config(path).server is not None


def test_yaml_syntax_error() -> None:
    assert only_problem(
        """\
        client:
          listenAddr: "127.0.0.1:59401"
           dstAddr: "198.51.100.32:59402"
        """
    ) == (
        "engarde.yml: line 3, column 4: YAML syntax error: expected <block end>, but found "
        "'<block mapping start>' (while parsing a block mapping); check the indentation"
    )
    assert only_problem("client:\n  listenAddr: a: b\n") == (
        "engarde.yml: line 2, column 16: YAML syntax error: mapping values are not allowed "
        "here; check the indentation"
    )


def test_yaml_tabs_get_a_hint() -> None:
    problem = only_problem('client:\n\tlistenAddr: "127.0.0.1:59401"\n')
    assert problem.startswith("engarde.yml: line 2, column 1: YAML syntax error: ")
    assert problem.endswith("; indent with spaces, YAML does not allow tabs")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_no_sections(text: str) -> None:
    assert only_problem(text) == "engarde.yml: no 'client' or 'server' section"


@pytest.mark.parametrize(("text", "shown"), [("- a\n- b\n", "['a', 'b']"), ("hello\n", "'hello'")])
def test_top_level_not_a_mapping(text: str, shown: str) -> None:
    assert only_problem(text) == (
        "engarde.yml: expected a mapping with a 'client:' and/or 'server:' section at the top "
        f"level, got {shown}"
    )


def test_section_not_a_mapping() -> None:
    assert only_problem('client: "127.0.0.1:59401"\n') == (
        "engarde.yml: client: expected a mapping (key: value lines), got '127.0.0.1:59401'"
    )


def test_multiple_problems_one_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(
            """\
client:
  listenAddr: "127.0.0.1"
  dstAddr: "198.51.100.32:70000"
  writeTimeout: fast
server:
  listenAddr: ":59402"
  dstAddr: "127.0.0.1:59301"
  clientTimeout: -1
""",
            source="engarde.yml",
        )
    text = str(info.value)
    assert text == "\n".join(
        [
            "engarde.yml: client.listenAddr: expected HOST:PORT, got '127.0.0.1'",
            "engarde.yml: client.dstAddr: the port must be from 1 to 65535, "
            "got '198.51.100.32:70000'",
            "engarde.yml: client.writeTimeout: expected milliseconds or a duration like "
            "'10ms', '1.5s', '2m', got 'fast'",
            "engarde.yml: server.clientTimeout: must not be negative (0 means the default, "
            "30 seconds), got -1",
        ]
    )
    assert text.count("\n") == len(info.value.problems) - 1


def test_role_section_missing() -> None:
    assert only_problem(MINIMAL_CLIENT, role="server") == ("engarde.yml: server: section missing")
    assert only_problem(MINIMAL_SERVER, role="client") == ("engarde.yml: client: section missing")


def test_role_with_empty_section_lists_required_keys() -> None:
    assert problems_of("client:\n", role="client") == [
        "engarde.yml: client.listenAddr: required key missing",
        "engarde.yml: client.dstAddr: required key missing",
    ]


def test_role_ignores_a_broken_other_section() -> None:
    text = MINIMAL_CLIENT + "server:\n  listenAddr: nowhere\n"
    config = load_config_text(text, source="engarde.yml", role="client")
    assert config.client is not None
    assert config.server is None
    assert config.warnings == [
        "engarde.yml: server: section ignored (running as client), it has problems:",
        "engarde.yml: server.listenAddr: expected HOST:PORT, got 'nowhere'",
        "engarde.yml: server.dstAddr: required key missing",
    ]
    # Without a role, the same file is an error.
    assert problems_of(text) == [
        "engarde.yml: server.listenAddr: expected HOST:PORT, got 'nowhere'",
        "engarde.yml: server.dstAddr: required key missing",
    ]


def test_role_still_reports_top_level_problems() -> None:
    assert only_problem(MINIMAL_CLIENT + "clients: {}\n", role="client") == (
        "engarde.yml: clients: unknown key, did you mean 'client'?"
    )


def test_role_keeps_a_valid_other_section() -> None:
    config = load_config_text(MINIMAL_CLIENT + MINIMAL_SERVER, role="server")
    assert config.client is not None and config.server is not None


# ----------------------------------------------------------------------------------------------
# describe()


def test_describe_shows_effective_settings() -> None:
    config = load_config_text(FULL, source="engarde.yml")
    text = describe(config)
    lines = text.splitlines()
    assert lines[0] == "source: engarde.yml"
    assert "client.writeTimeout: 10ms" in lines
    assert (
        "client.excludedInterfaces: Local Area Connection 2, VirtualBox Host-Only Network, wg*"
        in lines
    )
    assert "client.interfaceLabels.eth0: Fiber" in lines
    assert "client.dstOverrides[1]: wwan* -> vpn.example.org:59501" in lines
    assert "client.webManager.password: ***" in lines
    assert "client.dropForeignSources: false" in lines
    assert "server.clientTimeout: 30s" in lines
    assert "server.maxClients: 64" in lines
    assert all(": " in line for line in lines)


def test_describe_role_and_disabled_values() -> None:
    config = load_config_text(
        MINIMAL_CLIENT + "  writeTimeout: -1\n" + MINIMAL_SERVER + '  clientTimeout: "1500ms"\n'
    )
    client_text = describe(config, "client")
    assert "client.writeTimeout: off (no write timeout)" in client_text.splitlines()
    assert "client.webManager: off" in client_text.splitlines()
    assert "server." not in client_text
    assert "server.clientTimeout: 1.5s" in describe(config, "server").splitlines()
    assert "server: (none)" in describe(load_config_text(MINIMAL_CLIENT)).splitlines()


# ----------------------------------------------------------------------------------------------
# Shipped examples


def example_files() -> list[Path]:
    files = sorted(EXAMPLES.glob("*.yml")) + sorted(EXAMPLES.glob("*.sample"))
    return files


def test_examples_exist() -> None:
    names = {path.name for path in example_files()}
    assert {
        "scenario1-roaming-client.yml",
        "scenario2-two-networks.yml",
        "engarde.yml.sample",
    } <= names


@pytest.mark.parametrize("path", example_files(), ids=lambda path: path.name)
@pytest.mark.parametrize("role", ["client", "server"])
def test_examples_load(path: Path, role: str) -> None:
    config = load_config(path, role=role)  # type: ignore[arg-type]
    assert getattr(config, role) is not None
    assert config.warnings == []
    assert describe(config, role)


# ----------------------------------------------------------------------------------------------
# What a reload would change


RUNNING = """\
client:
  listenAddr: "127.0.0.1:59401"
  dstAddr: "198.51.100.32:59402"
  excludedInterfaces: ["wg*"]
  webManager: {listenAddr: "127.0.0.1:9001", username: admin, password: one}
server:
  listenAddr: "0.0.0.0:59402"
  dstAddr: "127.0.0.1:59301"
"""


def test_diff_says_what_changed_and_what_needs_a_restart() -> None:
    old = load_config_text(RUNNING)
    new = load_config_text(
        RUNNING.replace('["wg*"]', '["wg*", "eth3"]')
        .replace("password: one", "password: two")
        .replace('"127.0.0.1:59401"', '"127.0.0.1:59411"')
        .replace("127.0.0.1:59301", "127.0.0.1:59302")
    )
    changes = {c.key: c for c in diff(old, new, "client")}
    assert set(changes) == {
        "client.excludedInterfaces",
        "client.webManager.password",
        "client.listenAddr",
    }, "the server section is not the client's business"
    assert str(changes["client.excludedInterfaces"]) == (
        "client.excludedInterfaces: wg* -> wg*, eth3"
    )
    assert changes["client.excludedInterfaces"].live
    password = changes["client.webManager.password"]
    assert (password.old, password.new, password.live) == ("***", "*** (changed)", True)
    assert not changes["client.listenAddr"].live
    assert "needs a restart" in str(changes["client.listenAddr"])
    assert [c.key for c in diff(old, new, "server")] == ["server.dstAddr"]
    assert diff(old, old) == []


def test_a_dashboard_appearing_is_a_restart() -> None:
    old = load_config_text(RUNNING)
    new = load_config_text(RUNNING.replace(
        '  webManager: {listenAddr: "127.0.0.1:9001", username: admin, password: one}\n', ""
    ))  # fmt: skip
    changes = diff(old, new, "client")
    assert changes and all(not c.live for c in changes)


def test_check_config_against_the_running_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engarde.cli import main

    running = tmp_path / "running.yml"
    running.write_text(RUNNING)
    edited = tmp_path / "engarde.yml"
    edited.write_text(RUNNING.replace('["wg*"]', '["wg*", "eth3"]'))
    assert main(["check-config", str(edited), "--against", str(running), "--role", "client"]) == 0
    assert capsys.readouterr().out == "client.excludedInterfaces: wg* -> wg*, eth3\n"
    assert main(["check-config", str(running), "--against", str(running)]) == 0
    assert "would change nothing" in capsys.readouterr().out
    edited.write_text("client: [")
    assert main(["check-config", str(edited), "--against", str(running)]) == 2


# ----------------------------------------------------------------------------------------------
# Ranges (issue 13 item 5): odd durations are a clear error, never a traceback


HUGE = '"1' + "0" * 400 + '"'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            f"clientTimeout: {HUGE}",
            "server.clientTimeout: must be from 1s to 24h (0 means the default, 30 seconds), got",
        ),
        (
            'clientTimeout: "1ns"',
            "server.clientTimeout: must be from 1s to 24h (0 means the default, 30 seconds), "
            "got '1ns'",
        ),
        ('clientTimeout: "25h"', "server.clientTimeout: must be from 1s to 24h"),
        (
            f"writeTimeout: {HUGE}",
            "server.writeTimeout: must be from 1ms to 1h (0 means the default, 10ms; negative "
            "disables it), got",
        ),
        ('writeTimeout: "2h"', "server.writeTimeout: must be from 1ms to 1h"),
        ("maxClients: 9999999999", "server.maxClients: "),
        ("maxPeers: 100000", "server.maxPeers: "),
        ('clientTimeout: "' + "9" * 2000 + 's"', "server.clientTimeout: expected seconds"),
    ],
)
def test_durations_and_counts_out_of_range(line: str, problem: str) -> None:
    assert only_problem(server_with(line + "\n")).startswith("engarde.yml: " + problem)


def test_every_problem_one_line_naming_its_key() -> None:
    text = server_with(f'clientTimeout: {HUGE}\nwriteTimeout: "2h"\n')
    problems = problems_of(text)
    keys = sorted(p.split(":")[1].strip() for p in problems)
    assert keys == ["server.clientTimeout", "server.writeTimeout"], problems
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 60.0), ("0", 60.0), ('"5m"', 300.0), ("30", 30.0), ("-1", None), ('"24h"', 86400.0)],
)
def test_resolve_interval(value: str | None, seconds: float | None) -> None:
    text = MINIMAL_CLIENT if value is None else client_with(f"resolveInterval: {value}\n")
    config = load_config_text(text)
    assert config.client is not None
    assert config.client.resolve_interval_s == seconds
    if seconds is not None:
        assert f"client.resolveInterval: {seconds:g}s" in describe(config, "client")


def test_resolve_interval_range() -> None:
    assert only_problem(client_with('resolveInterval: "100ms"\n')) == (
        "engarde.yml: client.resolveInterval: must be from 1s to 24h (0 means the default, "
        "60 seconds; negative: never), got '100ms'"
    )
