"""engarde.yml: the models, the loader and the one-line error format.

Theory of operation
-------------------
A config file is YAML with a ``client:`` and/or a ``server:`` section; keys are camelCase and
case-sensitive, as in the Go original, so an existing ``engarde.yml`` loads unchanged.

Loading collects every problem instead of stopping at the first, and raises one ConfigError
with one line each, ``FILE: key.path: message, got <value>``: YAML (duplicate keys reported,
unquoted scalars kept as the text written) -> a top-level mapping of ``client``/``server`` ->
one frozen, strict pydantic model per section (``extra="forbid"``), whose errors are translated
into those lines; pydantic's own multi-line text is never shown.

What this package does not do: resolve host names, check that addresses exist on this machine,
or open sockets. Those happen in ``engarde.net`` when the relay starts. The validated models are
plain immutable data; nothing here is used per datagram.

Modules, lower layers first: ``units`` (HOST:PORT, durations, bools, counts) <- ``models``
(pydantic models, defaults) <- ``errors`` (ConfigError, pydantic errors -> lines, did you mean)
<- ``load`` (YAML -> Config); ``effective`` (``describe``: the settings as check-config prints
them; ``diff``: what a reload would change) reads ``models``.
"""

from __future__ import annotations

from engarde.config.effective import RESTART_KEYS, Change, describe, diff
from engarde.config.errors import ConfigError
from engarde.config.load import load_config, load_config_text
from engarde.config.models import (
    DEFAULT_CLIENT_TIMEOUT_S,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_MAX_PEERS,
    DEFAULT_WRITE_TIMEOUT_MS,
    ClientConfig,
    Config,
    DstOverride,
    Role,
    ServerConfig,
    WebManagerConfig,
)
from engarde.config.units import parse_host_port

__all__ = [
    "DEFAULT_CLIENT_TIMEOUT_S",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_MAX_PEERS",
    "DEFAULT_WRITE_TIMEOUT_MS",
    "RESTART_KEYS",
    "Change",
    "ClientConfig",
    "Config",
    "ConfigError",
    "DstOverride",
    "Role",
    "ServerConfig",
    "WebManagerConfig",
    "describe",
    "diff",
    "load_config",
    "load_config_text",
    "parse_host_port",
]
