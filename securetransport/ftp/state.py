"""The state of one FTP session, pure (no Twisted): its phases, the record of what it
remembers, and the rule of which command may run when.

Phases and how a session moves between them:

| phase         | what it means                             | left by                              |
|---------------|-------------------------------------------|--------------------------------------|
| CONNECTED     | no login yet (TLS may be up or not)       | USER 331 -> AWAITING_PASS;           |
|               |                                           | USER 232 -> LOGGED_IN                |
| AWAITING_PASS | USER answered 331; PASS is due            | PASS ok -> LOGGED_IN; PASS failed,   |
|               |                                           | USER refused, AUTH -> CONNECTED      |
| LOGGED_IN     | a user is logged in, no transfer runs     | a transfer starts -> TRANSFER;       |
|               |                                           | REIN -> CONNECTED                    |
| TRANSFER      | a transfer runs: urgent commands (ABOR,   | the transfer ends -> LOGGED_IN       |
|               | STAT, QUIT) are served at once, the       |                                      |
|               | others wait for its end                   |                                      |
| CLOSING       | the connection is closing: nothing runs   | -                                    |

Which command may run in which phase is a column of the command table
(`commands.CommandSpec.phases`); `commands.refusal` gives the reply when it may not. REIN is one
reset of the record (`SessionState.rein`): the login and the file state go, the TLS
state, PBSZ and PROT stay (SPEC section 6).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from securetransport.config import ClassConfig
from securetransport.ftp.listing import DEFAULT_FACTS
from securetransport.policy import UserDecision
from securetransport.userstore import AccountSnapshot


class Phase(enum.Enum):
    CONNECTED = "connected"
    AWAITING_PASS = "awaiting-pass"
    LOGGED_IN = "logged-in"
    TRANSFER = "transfer"
    CLOSING = "closing"


BEFORE_LOGIN = frozenset({Phase.CONNECTED, Phase.AWAITING_PASS})
AFTER_LOGIN = frozenset({Phase.LOGGED_IN, Phase.TRANSFER})
ANY_PHASE = BEFORE_LOGIN | AFTER_LOGIN


@dataclass(frozen=True)
class PendingLogin:
    """What USER decided when it answered 331: PASS completes it."""

    name: str
    decision: UserDecision
    logged_name: dict[str, str | None]  # the audit fields of the name (audit.login_name_fields)
    snapshot: AccountSnapshot | None = None  # the account as USER read it (PASS may use it)


@dataclass(slots=True)
class SessionState:
    """What a session remembers between commands."""

    phase: Phase = Phase.CONNECTED
    # TLS and data protection: kept by REIN
    protected: bool = False  # the control channel runs under TLS
    tls_started: bool = False  # AUTH accepted or implicit port: a handshake is under way
    pbsz: bool = False
    prot_private: bool = False
    # login
    pending: PendingLogin | None = None
    username: str | None = None
    klass: ClassConfig | None = None  # the logged-in user's class
    commands_before_login: int = 0
    failed_logins: int = 0
    # files and transfers
    cwd: str = "/"
    rest: int = 0
    rnfr: str | None = None
    binary: bool = True
    epsv_all: bool = False
    mlst_facts: tuple[str, ...] = DEFAULT_FACTS
    client_name: str | None = None
    data_tls_refusals: int = 0
    quit_after_transfer: bool = False

    @property
    def logged_in(self) -> bool:
        return self.phase in AFTER_LOGIN

    def logged_in_as(self, name: str, klass: ClassConfig | None) -> None:
        self.phase = Phase.LOGGED_IN
        self.pending = None
        self.username = name
        self.klass = klass
        self.cwd = "/"

    def awaiting_pass(self, pending: PendingLogin) -> None:
        self.phase = Phase.AWAITING_PASS
        self.pending = pending

    def login_refused(self) -> None:
        """USER refused or PASS failed: as before USER (TLS state and PBSZ/PROT kept)."""
        if self.phase is Phase.AWAITING_PASS:
            self.phase = Phase.CONNECTED
        self.pending = None

    def rein(self) -> None:
        """REIN: log out and forget the file state; keep TLS, PBSZ and PROT."""
        was_logged_in = self.logged_in
        self.phase = Phase.CONNECTED
        self.pending = None
        self.username = None
        self.klass = None
        self.cwd = "/"
        self.rnfr = None
        self.rest = 0
        self.binary = True
        self.epsv_all = False
        if was_logged_in:
            self.commands_before_login = 0

    def closing(self) -> None:
        self.phase = Phase.CLOSING
