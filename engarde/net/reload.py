"""Reloading engarde.yml while running: SIGHUP, and POST /api/v2/reload on the dashboard.

Theory of operation: the file is read again with the same loader (and the same one-line
errors); a broken file is reported, logged, and the running config stays as it is. Otherwise
`engarde.config.diff` says what changed in this role's section. The keys a running daemon can
take (`Change.live`) are handed to the role's `apply` (registered with `attach` by run_client /
run_server), which applies them without dropping a datagram: new sockets first, then the old
ones close. The others (the listen addresses, the dashboard's, relayNonWireGuard) are logged as
needing a restart and keep their running value. A role that cannot apply (a new destination
that does not resolve) raises ReloadError: nothing is applied, the running config stays.
Runtime exclusions made from the dashboard are the client core's, not the config's: they stay.

One reload at a time (a lock); `dry_run` only says what a reload would change.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from engarde.config import (
    Change,
    ClientConfig,
    Config,
    ConfigError,
    Role,
    ServerConfig,
    diff,
    load_config,
)

logger = logging.getLogger(__name__)

Section = ClientConfig | ServerConfig
Apply = Callable[[Any], Awaitable[None]]


class ReloadError(Exception):
    """The role could not apply the new settings (the message says why); nothing changed."""


@dataclass
class ReloadResult:
    ok: bool
    dry_run: bool = False
    applied: list[Change] = field(default_factory=list)
    needs_restart: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def changes(items: list[Change]) -> list[dict[str, str]]:
            return [{"key": c.key, "old": c.old, "new": c.new} for c in items]

        return {
            "ok": self.ok,
            "dryRun": self.dry_run,
            "applied" if not self.dry_run else "wouldApply": changes(self.applied),
            "needsRestart": changes(self.needs_restart),
            "problems": list(self.problems),
        }


class Reloader:
    def __init__(self, path: str, role: Role, running: Config) -> None:
        self.path = path
        self.role = role
        self.running = running
        self._apply: Apply | None = None
        self._listeners: list[Callable[[Any], None]] = []
        self._lock = trio.Lock()

    def attach(self, apply: Apply) -> None:
        """The role's way to apply a new section (see the module docstring)."""
        self._apply = apply

    def on_applied(self, listener: Callable[[Any], None]) -> None:
        """Also tell `listener` (the dashboard: its credentials) about each applied section."""
        self._listeners.append(listener)

    @property
    def section(self) -> Section:
        section = self.running.client if self.role == "client" else self.running.server
        assert section is not None  # the daemon runs with its own section
        return section

    async def reload(self, *, dry_run: bool = False, why: str = "SIGHUP") -> ReloadResult:
        """Read the file again and apply what changed (or, `dry_run`, only say it)."""
        async with self._lock:
            return await self._reload(dry_run, why)

    async def _reload(self, dry_run: bool, why: str) -> ReloadResult:
        verb = "check" if dry_run else "reload"
        try:
            new = load_config(self.path, role=self.role)
        except ConfigError as exc:
            if not dry_run:
                logger.warning("%s (%s): %s has problems; the running config stays:", verb,
                               why, self.path)  # fmt: skip
                for line in exc.problems:
                    logger.warning("%s", line)
            return ReloadResult(False, dry_run, problems=list(exc.problems))
        changes = diff(self.running, new, self.role)
        live = [c for c in changes if c.live]
        restart = [c for c in changes if not c.live]
        result = ReloadResult(True, dry_run, live, restart)
        if dry_run:
            return result
        for line in new.warnings:
            logger.warning("%s", line)
        section = _keep_running(_section(new, self.role), self.section, restart)
        if live:
            if self._apply is None:
                raise RuntimeError("reload before the role attached its apply")
            try:
                await self._apply(section)
            except ReloadError as exc:
                logger.warning("reload (%s): %s; the running config stays", why, exc)
                return ReloadResult(False, False, problems=[str(exc)])
        self.running = _replace(self.running, self.role, section)
        for listener in self._listeners:
            listener(section)
        if not changes:
            logger.info("reload (%s): %s: nothing changed", why, self.path)
        for change in live:
            logger.info("reload (%s): %s", why, change)
        for change in restart:
            logger.warning("reload (%s): %s: needs a restart; the running value stays", why, change)
        return result


def _section(config: Config, role: Role) -> Section:
    section = config.client if role == "client" else config.server
    assert section is not None  # load_config(role=...) guarantees it
    return section


def _keep_running(new: Section, running: Section, restart: list[Change]) -> Section:
    """`new` with the running value of every key that needs a restart."""
    keys = {c.key.split(".", 1)[1] for c in restart if "." in c.key}
    update: dict[str, Any] = {}
    for key in ("listenAddr", "relayNonWireGuard"):
        if key in keys:
            update[key] = getattr(running, key)
    if any(k.startswith("webManager") for k in keys):
        web_new, web_old = new.webManager, running.webManager
        if web_new is None or web_old is None:
            update["webManager"] = web_old
        else:
            update["webManager"] = web_new.model_copy(update={"listenAddr": web_old.listenAddr})
    return new.model_copy(update=update) if update else new


def _replace(config: Config, role: Role, section: Section) -> Config:
    out = config.model_copy(update={role: section})
    out._source = config.source
    return out
