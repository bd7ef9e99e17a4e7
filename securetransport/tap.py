"""twistd plugin entry: `twistd -n securetransport --config FILE`."""

from __future__ import annotations

from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from securetransport.cli import DEFAULT_CONFIG
from securetransport.config import ConfigError, load_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    optParameters = [["config", "c", None, f"configuration file (default: {DEFAULT_CONFIG})"]]

    def postOptions(self) -> None:
        path = Path(self["config"]) if self["config"] else DEFAULT_CONFIG
        try:
            self["parsed"] = load_config(path)
        except ConfigError as error:
            raise usage.UsageError("\n".join(error.problems)) from None


def makeService(options: Options) -> IService:
    from securetransport.service import SecureTransportService

    return SecureTransportService(options["parsed"])
