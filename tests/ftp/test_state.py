"""The command table against SPEC sections 5 and 7, restated here independently, for every
verb in every phase, with and without an argument, on a clear and a protected channel;
and the session record's transitions (REIN as one reset)."""

from __future__ import annotations

import itertools

from twisted.trial.unittest import SynchronousTestCase

from securetransport.ftp.commands import COMMANDS, FEATURES, Argument, check
from securetransport.ftp.state import PendingLogin, Phase, SessionState

# SPEC section 7: what may run before login (STAT only without an argument).
BEFORE_LOGIN = set(
    "USER PASS ACCT AUTH PBSZ PROT CCC FEAT OPTS HELP SYST NOOP STAT CLNT REIN QUIT".split()
)
# Commands that take no argument, and commands that need one (RFC 959 and the extensions).
NO_ARGUMENT = set("CCC FEAT SYST NOOP REIN QUIT PWD XPWD CDUP XCUP ABOR PASV".split())
NEEDS_ARGUMENT = set(
    "USER AUTH PBSZ PROT OPTS SITE CWD MKD XMKD RMD XRMD DELE RNFR RNTO SIZE MDTM MFMT HASH "
    "RETR STOR APPE REST TYPE MODE STRU PORT EPRT".split()
)
PHASES = [Phase.CONNECTED, Phase.AWAITING_PASS, Phase.LOGGED_IN, Phase.TRANSFER]


def expected(verb: str, phase: Phase, argument: str, protected: bool) -> tuple[int, str] | None:
    logged_in = phase in (Phase.LOGGED_IN, Phase.TRANSFER)
    if not logged_in and (verb not in BEFORE_LOGIN or (verb == "STAT" and argument)):
        return 530, "login"
    if verb in NEEDS_ARGUMENT and not argument:
        return 501, "argument"
    if verb in NO_ARGUMENT and argument:
        return 501, "argument"
    if verb == "PASS" and phase is Phase.CONNECTED:
        return 503, "PASS without USER"
    if verb in ("USER", "PASS", "AUTH") and logged_in:
        return 503, "after login"
    if verb in ("PBSZ", "PROT") and not protected:
        return 503, "needs TLS"
    return None


class CommandTableTests(SynchronousTestCase):
    def test_every_verb_phase_argument_and_channel(self) -> None:
        problems = []
        reached = set()
        for (verb, spec), phase, argument, protected in itertools.product(
            COMMANDS.items(), PHASES, ["", "x"], [False, True]
        ):
            want = expected(verb, phase, argument, protected)
            got = check(spec, phase, argument, protected)
            reached.add(want[1] if want else "runs")
            if (got[0] if got else None) != (want[0] if want else None):
                problems.append(
                    f"{verb} {phase.name} {argument!r} tls={protected}: {got} != {want}"
                )
        self.assertEqual(problems, [], "\n".join(problems[:30]))
        self.assertEqual(
            reached,
            {"runs", "login", "argument", "PASS without USER", "after login", "needs TLS"},
        )

    def test_argument_column_matches_the_restatement(self) -> None:
        for verb, spec in COMMANDS.items():
            if verb in NEEDS_ARGUMENT:
                self.assertIs(spec.argument, Argument.REQUIRED, verb)
            elif verb in NO_ARGUMENT:
                self.assertIs(spec.argument, Argument.NONE, verb)
            else:
                self.assertIs(spec.argument, Argument.OPTIONAL, verb)

    def test_closing_refuses_everything(self) -> None:
        for spec in COMMANDS.values():
            self.assertEqual(check(spec, Phase.CLOSING, "", True), (421, "Closing"))

    def test_texts(self) -> None:
        pas = COMMANDS["PASS"]
        self.assertEqual(check(pas, Phase.CONNECTED, "x", True), (503, "Login with USER first"))
        self.assertEqual(check(pas, Phase.LOGGED_IN, "x", True), (503, "Already logged in"))
        auth = COMMANDS["AUTH"]
        self.assertEqual(
            check(auth, Phase.LOGGED_IN, "TLS", True), (503, "AUTH is not allowed after login")
        )
        self.assertEqual(
            check(COMMANDS["PBSZ"], Phase.CONNECTED, "0", False),
            (503, "PBSZ needs a protected control channel (AUTH TLS)"),
        )
        self.assertEqual(
            check(COMMANDS["RETR"], Phase.CONNECTED, "f", False),
            (530, "Please log in with USER and PASS"),
        )

    def test_urgent_and_data_columns(self) -> None:
        self.assertEqual({v for v, s in COMMANDS.items() if s.urgent}, {"ABOR", "STAT", "QUIT"})
        self.assertEqual(
            {v for v, s in COMMANDS.items() if s.data},
            {"LIST", "NLST", "MLSD", "RETR", "STOR", "STOU", "APPE"},
        )

    def test_feat_lists_spec_section_5(self) -> None:
        for feature in ("AUTH TLS", "AUTH SSL", "PBSZ", "PROT", "EPSV", "EPRT", "MDTM", "MFMT",
                        "SIZE", "REST STREAM", "UTF8", "HASH SHA-256*"):  # fmt: skip
            self.assertIn(feature, FEATURES)
        self.assertEqual(len(FEATURES), len(set(FEATURES)))

    def test_aliases_share_their_handler(self) -> None:
        for alias, verb in (("XPWD", "PWD"), ("XCUP", "CDUP"), ("XMKD", "MKD"), ("XRMD", "RMD")):
            self.assertEqual(COMMANDS[alias].method, COMMANDS[verb].method)
            self.assertEqual(COMMANDS[alias].group, COMMANDS[verb].group)


class SessionStateTests(SynchronousTestCase):
    def test_login_and_rein(self) -> None:
        state = SessionState(protected=True, pbsz=True, prot_private=True)
        state.commands_before_login = 5
        state.awaiting_pass(PendingLogin("alice", None, {"user": "alice"}))
        self.assertIs(state.phase, Phase.AWAITING_PASS)
        state.logged_in_as("alice", None)
        self.assertIs(state.phase, Phase.LOGGED_IN)
        self.assertIsNone(state.pending)
        state.cwd, state.rest, state.rnfr, state.binary, state.epsv_all = "/d", 7, "/f", False, True
        state.rein()
        self.assertEqual(
            (state.phase, state.username, state.cwd, state.rest, state.rnfr, state.binary),
            (Phase.CONNECTED, None, "/", 0, None, True),
        )
        self.assertFalse(state.epsv_all)
        self.assertEqual(state.commands_before_login, 0)
        # TLS, PBSZ and PROT are kept (SPEC section 6).
        self.assertEqual((state.protected, state.pbsz, state.prot_private), (True, True, True))

    def test_rein_before_login_keeps_the_command_count(self) -> None:
        state = SessionState()
        state.commands_before_login = 4
        state.rein()
        self.assertEqual(state.commands_before_login, 4)

    def test_refused_login_returns_to_connected(self) -> None:
        state = SessionState()
        state.awaiting_pass(PendingLogin("alice", None, {"user": "alice"}))
        state.login_refused()
        self.assertEqual((state.phase, state.pending), (Phase.CONNECTED, None))
        state.closing()
        state.login_refused()
        self.assertIs(state.phase, Phase.CLOSING)
