"""examples/wireguard: every config parses (wg-quick's sections and keys), follows the three
rules of its README (Endpoint on engarde, MTU set, AllowedIPs that never cover the networks the
copies travel on), matches the engarde.yml of its scenario, and wg-quick reads it."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import REPO_ROOT
from tests.deploy.wg_conf import EXAMPLES, ConfError, for_wg_setconf, load, parse, values

CONFIGS = {
    # file: (engarde.yml, role)
    "scenario1-client-wg0.conf": ("scenario1-roaming-client.yml", "client"),
    "scenario1-server-wg0.conf": ("scenario1-roaming-client.yml", "server"),
    "scenario2-hostA-wg0.conf": ("scenario2-two-networks.yml", "client"),
    "scenario2-hostB-wg0.conf": ("scenario2-two-networks.yml", "server"),
}


def engarde_section(name: str) -> dict[str, object]:
    yml, role = CONFIGS[name]
    section = yaml.safe_load((REPO_ROOT / "examples" / yml).read_text())[role]
    assert isinstance(section, dict)
    return section


def test_every_example_is_listed() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.conf")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parses_and_follows_the_rules(name: str) -> None:
    conf = load(name)
    section = engarde_section(name)
    assert [s for s, _ in conf] == ["Interface", "Peer"]
    assert values(conf, "Interface", "MTU") == ["1420"]
    assert len(values(conf, "Interface", "Address")) == 1
    host, port = str(section["listenAddr" if CONFIGS[name][1] == "client" else "dstAddr"]).rsplit(
        ":", 1
    )
    if CONFIGS[name][1] == "client":
        # The Endpoint is the engarde client's listenAddr, never the server itself.
        assert values(conf, "Peer", "Endpoint") == [f"{host}:{port}"]
        assert "wg*" in section["excludedInterfaces"]  # type: ignore[operator]
        assert values(conf, "Peer", "PersistentKeepalive")
    else:
        # WireGuard listens where the engarde server forwards; it needs no Endpoint.
        assert values(conf, "Interface", "ListenPort") == [port]
        assert host == "127.0.0.1"
        assert values(conf, "Peer", "Endpoint") == []


def test_split_tunnel_never_covers_the_uplink_networks() -> None:
    conf = load("scenario2-hostA-wg0.conf")
    section = engarde_section("scenario2-hostA-wg0.conf")
    allowed = [ipaddress.ip_network(n.strip()) for v in values(conf, "Peer", "AllowedIPs")
               for n in v.split(",")]  # fmt: skip
    overrides = section["dstOverrides"]
    assert isinstance(overrides, list)
    destinations = [str(section["dstAddr"])] + [str(o["dstAddr"]) for o in overrides]
    for dst in destinations:
        address = ipaddress.ip_address(dst.rsplit(":", 1)[0])
        assert not any(address in net for net in allowed), (dst, allowed)


def test_full_tunnel_client() -> None:
    assert values(load("scenario1-client-wg0.conf"), "Peer", "AllowedIPs") == ["0.0.0.0/0"]


def test_parser_rejects_mistakes() -> None:
    with pytest.raises(ConfError, match="AllowedIps"):
        parse("[Peer]\nAllowedIps = 0.0.0.0/0\n")
    with pytest.raises(ConfError, match="Address is not a key of \\[Peer\\]"):
        parse("[Peer]\nAddress = 10.0.0.1/24\n")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_wg_accepts_the_keys(name: str, tmp_path: Path) -> None:
    """wg-quick reads it (with real keys in place of the placeholders) and strips it to what
    `wg setconf` gets, the same as tests/deploy/wg_conf.py does."""
    wg = shutil.which("wg")
    if wg is None:
        pytest.skip("wg missing (Debian package wireguard-tools)")
    key = subprocess.run([wg, "genkey"], capture_output=True, text=True, check=True).stdout
    public = subprocess.run(
        [wg, "pubkey"], input=key, capture_output=True, text=True, check=True
    ).stdout.strip()
    text = (EXAMPLES / name).read_text()
    for placeholder in {w for w in text.split() if w.endswith(("_PRIVATE_KEY", "_PUBLIC_KEY"))}:
        text = text.replace(placeholder, key.strip() if "PRIVATE" in placeholder else public)
    conf = parse(text)
    # `wg-quick strip` prints what wg setconf gets; it only reads the file (no root, no change).
    path = tmp_path / "wg0.conf"
    path.write_text(text)
    path.chmod(0o600)
    quick = shutil.which("wg-quick")
    if quick is None:
        pytest.skip("wg-quick missing (Debian package wireguard-tools)")
    stripped = subprocess.run([quick, "strip", str(path)], capture_output=True, text=True)
    assert stripped.returncode == 0, stripped.stderr
    # wg-quick's own reading agrees with ours: the lab test hands for_wg_setconf() to wg.
    assert parse(stripped.stdout) == parse(for_wg_setconf(conf)), stripped.stdout
