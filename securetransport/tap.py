"""twistd plugin entry: `twistd -n securetransport --config FILE`."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from securetransport.cli import DEFAULT_CONFIG
from securetransport.config import Config, ConfigError, load_config
from securetransport.pgstore import PostgreSQLUserStore
from securetransport.service import SecureTransportService
from securetransport.tls.context import TLSConfigError
from securetransport.tls.material import load_tls
from securetransport.tls.verify import TrustStoreError
from securetransport.userstore import UserStoreError
from securetransport.workers import WorkerSupervisor


class Options(usage.Options):
    synopsis = "[--config FILE]"
    optParameters = [["config", "c", None, f"configuration file (default: {DEFAULT_CONFIG})"]]

    def postOptions(self) -> None:
        path = Path(self["config"]) if self["config"] else DEFAULT_CONFIG
        try:
            self["parsed"] = load_config(path)
        except ConfigError as error:
            raise usage.UsageError("\n".join(error.problems)) from None
        # The [tls] files are parsed here, before twistd drops privileges (keys may be
        # readable by root only); a bad file is one line naming the key.
        config: Config = self["parsed"]
        key = config.tls.private_key
        if key is not None and key.exists() and key.stat().st_mode & 0o006:
            mode = key.stat().st_mode & 0o777
            raise usage.UsageError(
                f"tls.private_key: {key} is readable by other users (mode {mode:04o}); chmod 600"
            )
        try:
            self["tls"] = load_tls(config)
        except (TLSConfigError, TrustStoreError) as error:
            raise usage.UsageError(tls_problem(error, config)) from None
        self.refuse_root(config)
        if config.server.role != "edge":
            check_user_store(config)

    def refuse_root(self, config: Config) -> None:
        """Refuse to keep serving as root unless twistd drops privileges or the config says so."""
        parent = self.parent if self.parent is not None else {}
        drops = parent.get("uid") not in (None, 0, "0")
        if os.geteuid() == 0 and not drops and not config.server.allow_root:
            raise usage.UsageError(
                "refusing to serve as root: give twistd --uid and --gid "
                "(ports and keys are opened first), or set server.allow_root = true"
            )


def check_user_store(config: Config) -> None:
    """A PostgreSQL store must be reachable and on this program's schema (SPEC section 10):
    otherwise one line naming the key, and `securetransport db upgrade` when it is older."""
    if not config.server.users.startswith("postgresql://"):
        return

    try:
        PostgreSQLUserStore(config.server.users, max_size=1).close()
    except UserStoreError as error:
        raise usage.UsageError(f"server.users: {error}") from None


def tls_problem(error: Exception, config: Config) -> str:
    """One line naming the [tls] key whose file failed to load."""
    path = getattr(error, "path", None)
    text = str(error)
    if path is None or text.startswith("tls."):
        return text
    if config.tls.client_ca is not None and Path(path) == config.tls.client_ca:
        return f"tls.client_ca: {text}"
    for index, crl in enumerate(config.tls.crl, start=1):
        if Path(path) == crl:
            return f"tls.crl[{index}]: {text}"
    return f"tls: {text}"


def makeService(options: Options) -> IService:
    config: Config = options["parsed"]
    if config.server.role == "edge":
        from securetransport.edge.relay import EdgeService

        tls = options["tls"]
        return EdgeService(config, tls.contexts.credentials if tls is not None else None)
    if config.server.workers > 1:
        return WorkerSupervisor(config, tls=options["tls"])
    return SecureTransportService(config, tls=options["tls"])
