"""The command table: one row per FTP command, driving dispatch, HELP, FEAT and login checks."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Argument(enum.Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True)
class CommandSpec:
    verb: str
    argument: Argument
    before_login: bool  # may run before the user has logged in (SPEC section 7)
    during_transfer: bool  # served at once while a transfer runs (not queued)
    help: str
    handler: str = ""  # method name on the protocol; defaults to ftp_VERB
    writes: bool = False  # refused for read-only accounts

    @property
    def method(self) -> str:
        return self.handler or f"ftp_{self.verb}"


A = Argument
_ROWS: tuple[CommandSpec, ...] = (
    CommandSpec("USER", A.REQUIRED, True, False, "USER <name>: log in as name"),
    CommandSpec("PASS", A.OPTIONAL, True, False, "PASS <password>: the password for USER"),
    CommandSpec("ACCT", A.OPTIONAL, True, False, "ACCT <account>: not needed here"),
    CommandSpec("AUTH", A.REQUIRED, True, False, "AUTH TLS|SSL: protect the control channel"),
    CommandSpec("PBSZ", A.REQUIRED, True, False, "PBSZ 0: protection buffer size"),
    CommandSpec("PROT", A.REQUIRED, True, False, "PROT C|P: data channel protection"),
    CommandSpec("CCC", A.NONE, True, False, "CCC: clear the control channel (refused)"),
    CommandSpec("FEAT", A.NONE, True, False, "FEAT: list extensions"),
    CommandSpec("OPTS", A.REQUIRED, True, False, "OPTS UTF8 ON | OPTS MLST facts"),
    CommandSpec("HELP", A.OPTIONAL, True, False, "HELP [command]"),
    CommandSpec("SYST", A.NONE, True, False, "SYST: system type"),
    CommandSpec("NOOP", A.NONE, True, False, "NOOP: do nothing"),
    CommandSpec("STAT", A.OPTIONAL, True, True, "STAT [path]: status, or a listing"),
    CommandSpec("CLNT", A.OPTIONAL, True, False, "CLNT <name>: the client's name"),
    CommandSpec("REIN", A.NONE, True, False, "REIN: log out, keep the connection"),
    CommandSpec("QUIT", A.NONE, True, True, "QUIT: close the session"),
    CommandSpec("SITE", A.REQUIRED, False, False, "SITE HELP"),
    CommandSpec("PWD", A.NONE, False, False, "PWD: print the working folder"),
    CommandSpec("XPWD", A.NONE, False, False, "XPWD: same as PWD", "ftp_PWD"),
    CommandSpec("CWD", A.REQUIRED, False, False, "CWD <path>: change folder"),
    CommandSpec("CDUP", A.NONE, False, False, "CDUP: go to the parent folder"),
    CommandSpec("XCUP", A.NONE, False, False, "XCUP: same as CDUP", "ftp_CDUP"),
    CommandSpec("MKD", A.REQUIRED, False, False, "MKD <path>: make a folder", writes=True),
    CommandSpec("XMKD", A.REQUIRED, False, False, "XMKD: same as MKD", "ftp_MKD", True),
    CommandSpec("RMD", A.REQUIRED, False, False, "RMD <path>: remove a folder", writes=True),
    CommandSpec("XRMD", A.REQUIRED, False, False, "XRMD: same as RMD", "ftp_RMD", True),
    CommandSpec("DELE", A.REQUIRED, False, False, "DELE <path>: delete a file", writes=True),
    CommandSpec("RNFR", A.REQUIRED, False, False, "RNFR <path>: rename from", writes=True),
    CommandSpec("RNTO", A.REQUIRED, False, False, "RNTO <path>: rename to", writes=True),
    CommandSpec("SIZE", A.REQUIRED, False, False, "SIZE <path>: file size"),
    CommandSpec("MDTM", A.REQUIRED, False, False, "MDTM <path>: modification time"),
    CommandSpec("MFMT", A.REQUIRED, False, False, "MFMT <time> <path>: set mtime", writes=True),
    CommandSpec("LIST", A.OPTIONAL, False, False, "LIST [path]: ls -l listing"),
    CommandSpec("NLST", A.OPTIONAL, False, False, "NLST [path]: names"),
    CommandSpec("MLSD", A.OPTIONAL, False, False, "MLSD [path]: machine listing"),
    CommandSpec("MLST", A.OPTIONAL, False, False, "MLST [path]: facts of one entry"),
    CommandSpec("RETR", A.REQUIRED, False, False, "RETR <path>: download"),
    CommandSpec("STOR", A.REQUIRED, False, False, "STOR <path>: upload", writes=True),
    CommandSpec("STOU", A.OPTIONAL, False, False, "STOU [name]: upload, unique name", writes=True),
    CommandSpec("APPE", A.REQUIRED, False, False, "APPE <path>: append", writes=True),
    CommandSpec("REST", A.REQUIRED, False, False, "REST <offset>: restart point"),
    CommandSpec("ALLO", A.OPTIONAL, False, False, "ALLO: allocate (not needed)"),
    CommandSpec("ABOR", A.NONE, False, True, "ABOR: abort the transfer"),
    CommandSpec("TYPE", A.REQUIRED, False, False, "TYPE A|I: representation type"),
    CommandSpec("MODE", A.REQUIRED, False, False, "MODE S: transfer mode"),
    CommandSpec("STRU", A.REQUIRED, False, False, "STRU F: file structure"),
    CommandSpec("PASV", A.NONE, False, False, "PASV: passive mode (IPv4)"),
    CommandSpec("EPSV", A.OPTIONAL, False, False, "EPSV [1|2|ALL]: extended passive mode"),
    CommandSpec("PORT", A.REQUIRED, False, False, "PORT h1,h2,h3,h4,p1,p2: active mode"),
    CommandSpec("EPRT", A.REQUIRED, False, False, "EPRT |proto|addr|port|: active mode"),
    CommandSpec("HASH", A.REQUIRED, False, False, "HASH <path>: SHA-256 of a file"),
)

COMMANDS: dict[str, CommandSpec] = {row.verb: row for row in _ROWS}

FEATURES: tuple[str, ...] = (
    "AUTH TLS",
    "AUTH SSL",
    "PBSZ",
    "PROT",
    "EPRT",
    "EPSV",
    "MDTM",
    "MFMT",
    "SIZE",
    "REST STREAM",
    "TVFS",
    "UTF8",
    "CLNT",
    "HASH SHA-256*",
)

# Data-transfer and listing commands: they need a data connection.
DATA_COMMANDS = frozenset({"LIST", "NLST", "MLSD", "RETR", "STOR", "STOU", "APPE"})


def help_text() -> list[str]:
    """Body lines of `214` for HELP without argument: the verbs, eight per line."""
    verbs = sorted(COMMANDS)
    return [
        " " + " ".join(f"{v:<5}" for v in verbs[i : i + 8]).rstrip()
        for i in range(0, len(verbs), 8)
    ]
