"""The command table: one row per FTP command, read by dispatch, HELP and FEAT.

Columns (`CommandSpec`): the verb; its argument (none, optional, required); the phases
it may run in (`state.Phase`); the handler group that serves it; the HELP text; the
FEAT lines it adds; and flags: `urgent` (served at once while a transfer runs),
`needs_tls` (a protected control channel first, else 503), `writes` (refused for
read-only accounts), `data` (needs a data connection), `same_as` (an alias: XPWD is
PWD), `after_login` (the 503 text when it comes after login).

`check` applies the table, in this order: not logged in (530), the argument (501), the
sequence (503: after login, PASS without USER, no protected channel). It is pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from securetransport.ftp.state import AFTER_LOGIN, ANY_PHASE, BEFORE_LOGIN, Phase
from securetransport.replies import Reply


class Argument(enum.Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


class Group(enum.Enum):
    """The handler group serving a command (one module each under securetransport/ftp/)."""

    SESSION = "session"  # QUIT: the protocol shell itself
    SECURITY = "security"  # AUTH PBSZ PROT CCC
    LOGIN = "login"  # USER PASS ACCT REIN
    FILES = "files"  # paths, folders, file facts, and information (SYST FEAT HELP ...)
    DATA_SETUP = "data_setup"  # PASV EPSV PORT EPRT
    TRANSFERS = "transfers"  # RETR STOR ... LIST ... ABOR, REST TYPE MODE STRU ALLO


@dataclass(frozen=True)
class CommandSpec:
    verb: str
    argument: Argument
    phases: frozenset[Phase]
    group: Group
    help: str
    feat: tuple[str, ...] = ()
    urgent: bool = False
    needs_tls: bool = False
    writes: bool = False
    data: bool = False
    same_as: str = ""
    after_login: str = ""

    @property
    def method(self) -> str:
        """The handler method's name on its group: ftp_VERB (ftp_PWD for XPWD)."""
        return f"ftp_{self.same_as or self.verb}"


A = Argument
G = Group
ANY, PRE, POST = ANY_PHASE, BEFORE_LOGIN, AFTER_LOGIN
AWAITING = frozenset({Phase.AWAITING_PASS})
_ALREADY = "Already logged in"

# fmt: off
_ROWS: tuple[CommandSpec, ...] = (
    CommandSpec("USER", A.REQUIRED, PRE, G.LOGIN, "USER <name>: log in as name", after_login=_ALREADY),
    CommandSpec("PASS", A.OPTIONAL, AWAITING, G.LOGIN, "PASS <password>: the password for USER", after_login=_ALREADY),
    CommandSpec("ACCT", A.OPTIONAL, ANY, G.LOGIN, "ACCT <account>: not needed here"),
    CommandSpec("REIN", A.NONE, ANY, G.LOGIN, "REIN: log out, keep the connection"),
    CommandSpec("AUTH", A.REQUIRED, PRE, G.SECURITY, "AUTH TLS|SSL: protect the control channel",
                feat=("AUTH TLS", "AUTH SSL"), after_login="AUTH is not allowed after login"),
    CommandSpec("PBSZ", A.REQUIRED, ANY, G.SECURITY, "PBSZ 0: protection buffer size", feat=("PBSZ",), needs_tls=True),
    CommandSpec("PROT", A.REQUIRED, ANY, G.SECURITY, "PROT C|P: data channel protection", feat=("PROT",), needs_tls=True),
    CommandSpec("CCC", A.NONE, ANY, G.SECURITY, "CCC: clear the control channel (refused)"),
    CommandSpec("FEAT", A.NONE, ANY, G.FILES, "FEAT: list extensions"),
    CommandSpec("OPTS", A.REQUIRED, ANY, G.FILES, "OPTS UTF8 ON | OPTS MLST facts", feat=("UTF8",)),
    CommandSpec("HELP", A.OPTIONAL, ANY, G.FILES, "HELP [command]"),
    CommandSpec("SYST", A.NONE, ANY, G.FILES, "SYST: system type"),
    CommandSpec("NOOP", A.NONE, ANY, G.FILES, "NOOP: do nothing"),
    CommandSpec("STAT", A.OPTIONAL, ANY, G.FILES, "STAT [path]: status, or a listing", urgent=True),
    CommandSpec("CLNT", A.OPTIONAL, ANY, G.FILES, "CLNT <name>: the client's name", feat=("CLNT",)),
    CommandSpec("QUIT", A.NONE, ANY, G.SESSION, "QUIT: close the session", urgent=True),
    CommandSpec("SITE", A.REQUIRED, POST, G.FILES, "SITE HELP"),
    CommandSpec("PWD", A.NONE, POST, G.FILES, "PWD: print the working folder"),
    CommandSpec("XPWD", A.NONE, POST, G.FILES, "XPWD: same as PWD", same_as="PWD"),
    CommandSpec("CWD", A.REQUIRED, POST, G.FILES, "CWD <path>: change folder", feat=("TVFS",)),
    CommandSpec("CDUP", A.NONE, POST, G.FILES, "CDUP: go to the parent folder"),
    CommandSpec("XCUP", A.NONE, POST, G.FILES, "XCUP: same as CDUP", same_as="CDUP"),
    CommandSpec("MKD", A.REQUIRED, POST, G.FILES, "MKD <path>: make a folder", writes=True),
    CommandSpec("XMKD", A.REQUIRED, POST, G.FILES, "XMKD: same as MKD", writes=True, same_as="MKD"),
    CommandSpec("RMD", A.REQUIRED, POST, G.FILES, "RMD <path>: remove a folder", writes=True),
    CommandSpec("XRMD", A.REQUIRED, POST, G.FILES, "XRMD: same as RMD", writes=True, same_as="RMD"),
    CommandSpec("DELE", A.REQUIRED, POST, G.FILES, "DELE <path>: delete a file", writes=True),
    CommandSpec("RNFR", A.REQUIRED, POST, G.FILES, "RNFR <path>: rename from", writes=True),
    CommandSpec("RNTO", A.REQUIRED, POST, G.FILES, "RNTO <path>: rename to", writes=True),
    CommandSpec("SIZE", A.REQUIRED, POST, G.FILES, "SIZE <path>: file size", feat=("SIZE",)),
    CommandSpec("MDTM", A.REQUIRED, POST, G.FILES, "MDTM <path>: modification time", feat=("MDTM",)),
    CommandSpec("MFMT", A.REQUIRED, POST, G.FILES, "MFMT <time> <path>: set mtime", feat=("MFMT",), writes=True),
    CommandSpec("MLST", A.OPTIONAL, POST, G.FILES, "MLST [path]: facts of one entry"),
    CommandSpec("HASH", A.REQUIRED, POST, G.FILES, "HASH <path>: SHA-256 of a file", feat=("HASH SHA-256*",)),
    CommandSpec("LIST", A.OPTIONAL, POST, G.TRANSFERS, "LIST [path]: ls -l listing", data=True),
    CommandSpec("NLST", A.OPTIONAL, POST, G.TRANSFERS, "NLST [path]: names", data=True),
    CommandSpec("MLSD", A.OPTIONAL, POST, G.TRANSFERS, "MLSD [path]: machine listing", data=True),
    CommandSpec("RETR", A.REQUIRED, POST, G.TRANSFERS, "RETR <path>: download", data=True),
    CommandSpec("STOR", A.REQUIRED, POST, G.TRANSFERS, "STOR <path>: upload", writes=True, data=True),
    CommandSpec("STOU", A.OPTIONAL, POST, G.TRANSFERS, "STOU [name]: upload, unique name", writes=True, data=True),
    CommandSpec("APPE", A.REQUIRED, POST, G.TRANSFERS, "APPE <path>: append", writes=True, data=True),
    CommandSpec("REST", A.REQUIRED, POST, G.TRANSFERS, "REST <offset>: restart point", feat=("REST STREAM",)),
    CommandSpec("ALLO", A.OPTIONAL, POST, G.TRANSFERS, "ALLO: allocate (not needed)"),
    CommandSpec("ABOR", A.NONE, POST, G.TRANSFERS, "ABOR: abort the transfer", urgent=True),
    CommandSpec("TYPE", A.REQUIRED, POST, G.TRANSFERS, "TYPE A|I: representation type"),
    CommandSpec("MODE", A.REQUIRED, POST, G.TRANSFERS, "MODE S: transfer mode"),
    CommandSpec("STRU", A.REQUIRED, POST, G.TRANSFERS, "STRU F: file structure"),
    CommandSpec("PASV", A.NONE, POST, G.DATA_SETUP, "PASV: passive mode (IPv4)"),
    CommandSpec("EPSV", A.OPTIONAL, POST, G.DATA_SETUP, "EPSV [1|2|ALL]: extended passive mode", feat=("EPSV",)),
    CommandSpec("PORT", A.REQUIRED, POST, G.DATA_SETUP, "PORT h1,h2,h3,h4,p1,p2: active mode"),
    CommandSpec("EPRT", A.REQUIRED, POST, G.DATA_SETUP, "EPRT |proto|addr|port|: active mode", feat=("EPRT",)),
)
# fmt: on

COMMANDS: dict[str, CommandSpec] = {row.verb: row for row in _ROWS}

# What FEAT lists besides the MLST line (built from the session's OPTS MLST facts).
FEATURES: tuple[str, ...] = tuple(sorted({line for row in _ROWS for line in row.feat}))


def help_text() -> list[str]:
    """Body lines of `214` for HELP without argument: the verbs, eight per line."""
    verbs = sorted(COMMANDS)
    return [
        " " + " ".join(f"{v:<5}" for v in verbs[i : i + 8]).rstrip()
        for i in range(0, len(verbs), 8)
    ]


def refusal(spec: CommandSpec, phase: Phase, argument: str) -> tuple[int, str] | None:
    """The reply refusing `spec` in `phase` (with `argument`), or None when it may run.

    TRANSFER counts as LOGGED_IN here: a command that is not urgent waits in the
    shell's queue for the transfer to end, then runs.
    """
    if phase is Phase.CLOSING:
        return Reply.SERVICE_UNAVAILABLE, "Closing"
    effective = Phase.LOGGED_IN if phase is Phase.TRANSFER else phase
    if effective in spec.phases:
        if spec.verb == "STAT" and argument and effective in BEFORE_LOGIN:
            return Reply.NOT_LOGGED_IN, "Please log in with USER and PASS"
        return None
    if effective in BEFORE_LOGIN:
        if spec.verb == "PASS":
            return Reply.BAD_SEQUENCE, "Login with USER first"
        return Reply.NOT_LOGGED_IN, "Please log in with USER and PASS"
    return Reply.BAD_SEQUENCE, spec.after_login or f"{spec.verb} is not allowed after login"


def argument_problem(spec: CommandSpec, argument: str) -> tuple[int, str] | None:
    """501 when the command needs an argument and has none, or takes none and has one."""
    if spec.argument is Argument.REQUIRED and not argument:
        return Reply.SYNTAX_ERROR_ARGS, f"{spec.verb} needs an argument"
    if spec.argument is Argument.NONE and argument:
        return Reply.SYNTAX_ERROR_ARGS, f"{spec.verb} takes no argument"
    return None


def check(
    spec: CommandSpec, phase: Phase, argument: str, protected: bool
) -> tuple[int, str] | None:
    """The reply refusing the command before its handler runs, or None."""
    refused = refusal(spec, phase, argument)
    if refused is not None and refused[0] != Reply.BAD_SEQUENCE:
        return refused
    problem = argument_problem(spec, argument)
    if problem is not None:
        return problem
    if refused is not None:
        return refused
    if spec.needs_tls and not protected:
        return Reply.BAD_SEQUENCE, f"{spec.verb} needs a protected control channel (AUTH TLS)"
    return None
