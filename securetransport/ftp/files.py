"""Paths, folders and file facts (PWD CWD MKD RMD DELE RNFR RNTO SIZE MDTM MFMT HASH
MLST), and information about the session (SYST NOOP CLNT FEAT OPTS HELP SITE STAT)."""

from __future__ import annotations

import time

from twisted.internet.defer import Deferred

from securetransport.ftp import listing, parser
from securetransport.ftp.commands import COMMANDS, FEATURES, help_text
from securetransport.ftp.session import Session
from securetransport.replies import Reply, format_multiline
from securetransport.vfs import FileStat as Stat
from securetransport.vfs import FilesystemError


def strip_list_options(argument: str) -> str:
    """`LIST -la dir` -> `dir`: clients send ls options, which we ignore."""
    words = argument.split(" ")
    while words and words[0].startswith("-") and len(words[0]) > 1:
        words.pop(0)
    return " ".join(words)


def listing_lines(session: Session, path: str, verb: str) -> Deferred[list[str]]:
    """The lines of a LIST, NLST or MLSD of `path` (a folder, or one file for LIST/NLST)."""
    fs = session.filesystem()
    now = time.time()  # calendar time for ls dates ("recent" vs year), not the reactor clock
    writable = not session.read_only
    facts = session.state.mlst_facts

    def render(stats: list[Stat], single: bool) -> list[str]:
        if verb == "NLST":
            if single:
                return [path]
            return [listing.format_nlst_line(stat) for stat in stats]
        if verb == "MLSD":
            return [listing.format_mlsx_facts(stat, facts, writable=writable) for stat in stats]
        return [listing.format_list_line(stat, now) for stat in stats]

    def stat_done(stat: Stat) -> Deferred[list[str]] | list[str]:
        if stat.is_dir:
            return fs.listdir(path).addCallback(render, False)
        if verb == "MLSD":
            raise FilesystemError("Not a folder")
        return render([stat], True)

    return fs.stat(path).addCallback(stat_done)


class FileCommands:
    def __init__(self, session: Session) -> None:
        self.session = session

    # ------------------------------------------------------------------- information
    def ftp_SYST(self, argument: str) -> None:
        self.session.reply(Reply.SYSTEM_TYPE, "UNIX Type: L8")

    def ftp_NOOP(self, argument: str) -> None:
        self.session.reply(Reply.OK, "NOOP ok")

    def ftp_CLNT(self, argument: str) -> None:
        self.session.state.client_name = argument[:128]
        self.session.reply(Reply.OK, "Noted")

    def ftp_FEAT(self, argument: str) -> None:
        body = [" " + feature for feature in FEATURES]
        body.append(" " + listing.format_feat_mlst(self.session.state.mlst_facts))
        self.session.reply_raw(
            format_multiline(Reply.SYSTEM_STATUS, "Extensions supported:", sorted(body), "End")
        )

    def ftp_OPTS(self, argument: str) -> None:
        session = self.session
        option, _, value = argument.partition(" ")
        option = option.upper()
        if option == "UTF8":
            if value.strip().upper() in ("ON", ""):
                session.reply(Reply.OK, "UTF8 is always on")
            else:
                session.reply(Reply.NOT_IMPLEMENTED_PARAMETER, "UTF8 cannot be turned off")
        elif option == "MLST":
            session.state.mlst_facts = listing.parse_opts_mlst(value)
            facts = "".join(f + ";" for f in session.state.mlst_facts)
            session.reply(Reply.OK, "MLST OPTS " + facts)
        elif option == "HASH":
            if value.strip().upper() in ("", "SHA-256"):
                session.reply(Reply.OK, "SHA-256")
            else:
                session.reply(Reply.SYNTAX_ERROR_ARGS, "Only SHA-256 is supported")
        else:
            session.reply(Reply.SYNTAX_ERROR_ARGS, f"Option {option} not understood")

    def ftp_HELP(self, argument: str) -> None:
        verb = argument.strip().upper()
        if verb:
            spec = COMMANDS.get(verb)
            if spec is None:
                text = f"Unknown command {parser.sanitize_reply_text(verb)}"
                self.session.reply(Reply.SYNTAX_ERROR_ARGS, text)
            else:
                self.session.reply(Reply.HELP, spec.help)
            return
        self.session.reply_raw(
            format_multiline(
                Reply.HELP, "The following commands are recognized:", help_text(), "Help OK"
            )
        )

    def ftp_SITE(self, argument: str) -> None:
        if argument.strip().upper() == "HELP":
            self.session.reply(Reply.HELP, "SITE HELP: no SITE commands are served")
        else:
            self.session.reply(Reply.NOT_IMPLEMENTED, "SITE command not implemented")

    def ftp_STAT(self, argument: str) -> Deferred[None] | None:
        session, state = self.session, self.session.state
        transfer = session.transfer
        if transfer is not None:
            session.reply(
                Reply.SYSTEM_STATUS,
                f"Transfer in progress: {transfer.verb} "
                f"{parser.sanitize_reply_text(transfer.path)}, {transfer.bytes} bytes",
            )
            return None
        if argument:
            path = session.resolve(strip_list_options(argument))

            def show(lines: list[str]) -> None:
                body = [" " + line for line in lines]
                session.reply_raw(
                    format_multiline(Reply.FILE_STATUS, "Status follows:", body, "End")
                )

            return listing_lines(session, path, "LIST").addCallbacks(show, session.fs_error)
        handshake = session.handshake
        channel = f"TLS {handshake.tls_version}" if state.protected and handshake else "clear"
        lines = [
            f" Connected from {session.peer}",
            f" Logged in as {state.username}" if state.username else " Not logged in",
            f" Control channel: {channel}",
            f" Data protection: {'Private' if state.prot_private else 'Clear'}",
            f" Type: {'BINARY' if state.binary else 'ASCII'}; mode: Stream; structure: File",
        ]
        session.reply_raw(
            format_multiline(Reply.SYSTEM_STATUS, "securetransport status:", lines, "End of status")
        )
        return None

    # ------------------------------------------------------------------- paths
    def ftp_PWD(self, argument: str) -> None:
        cwd = self.session.state.cwd
        self.session.reply(Reply.PATH_CREATED, f"{parser.quote_path(cwd)} is the current folder")

    def ftp_CWD(self, argument: str) -> Deferred[None]:
        session = self.session
        path = session.resolve(argument)

        def changed(stat: Stat) -> None:
            if not stat.is_dir:
                session.reply(Reply.FILE_UNAVAILABLE, "Not a folder")
                return
            session.state.cwd = path
            text = f"Folder changed to {parser.sanitize_reply_text(path)}"
            session.reply(Reply.FILE_ACTION_OK, text)

        return session.filesystem().stat(path).addCallbacks(changed, session.fs_error)

    def ftp_CDUP(self, argument: str) -> Deferred[None]:
        return self.ftp_CWD("..")

    def ftp_MKD(self, argument: str) -> Deferred[None]:
        session = self.session
        path = session.resolve(argument)
        d = session.filesystem().mkdir(path)
        d.addCallback(
            lambda _: session.reply(Reply.PATH_CREATED, f"{parser.quote_path(path)} created")
        )
        return d.addErrback(session.fs_error)

    def ftp_RMD(self, argument: str) -> Deferred[None]:
        session = self.session
        d = session.filesystem().rmdir(session.resolve(argument))
        d.addCallback(lambda _: session.reply(Reply.FILE_ACTION_OK, "Folder removed"))
        return d.addErrback(session.fs_error)

    def ftp_DELE(self, argument: str) -> Deferred[None]:
        session = self.session
        d = session.filesystem().remove(session.resolve(argument))
        d.addCallback(lambda _: session.reply(Reply.FILE_ACTION_OK, "File deleted"))
        return d.addErrback(session.fs_error)

    def ftp_RNFR(self, argument: str) -> Deferred[None]:
        session = self.session
        path = session.resolve(argument)
        session.state.rnfr = None

        def found(_: Stat) -> None:
            session.state.rnfr = path
            session.reply(Reply.PENDING_FURTHER_INFO, "Ready for RNTO")

        return session.filesystem().stat(path).addCallbacks(found, session.fs_error)

    def ftp_RNTO(self, argument: str) -> Deferred[None] | None:
        session = self.session
        source, session.state.rnfr = session.state.rnfr, None
        if source is None:
            session.reply(Reply.BAD_SEQUENCE, "RNFR first")
            return None
        d = session.filesystem().rename(source, session.resolve(argument))
        d.addCallback(lambda _: session.reply(Reply.FILE_ACTION_OK, "Renamed"))
        return d.addErrback(session.fs_error)

    def ftp_SIZE(self, argument: str) -> Deferred[None]:
        session = self.session

        def size(stat: Stat) -> None:
            if stat.is_dir:
                session.reply(Reply.FILE_UNAVAILABLE, "Not a regular file")
            else:
                session.reply(Reply.FILE_STATUS, str(stat.size))

        path = session.resolve(argument)
        return session.filesystem().stat(path).addCallbacks(size, session.fs_error)

    def ftp_MDTM(self, argument: str) -> Deferred[None]:
        session = self.session

        def mdtm(stat: Stat) -> None:
            session.reply(Reply.FILE_STATUS, listing.format_mdtm(stat.mtime))

        path = session.resolve(argument)
        return session.filesystem().stat(path).addCallbacks(mdtm, session.fs_error)

    def ftp_MFMT(self, argument: str) -> Deferred[None] | None:
        session = self.session
        stamp, _, name = argument.partition(" ")
        try:
            mtime = listing.parse_mfmt_time(stamp)
        except ValueError:
            mtime = None
        if mtime is None or not name:
            session.reply(Reply.SYNTAX_ERROR_ARGS, "MFMT needs YYYYMMDDHHMMSS and a path")
            return None
        d = session.filesystem().set_mtime(session.resolve(name), mtime)
        d.addCallback(
            lambda _: session.reply(
                Reply.FILE_STATUS,
                f"Modify={listing.format_mdtm(mtime)}; {parser.sanitize_reply_text(name)}",
            )
        )
        return d.addErrback(session.fs_error)

    def ftp_HASH(self, argument: str) -> Deferred[None]:
        session = self.session
        path = session.resolve(argument)
        fs = session.filesystem()

        def digest(stat: Stat) -> Deferred[None]:
            if stat.is_dir:
                raise FilesystemError("Not a regular file")
            return fs.digest(path, 0, None).addCallback(
                lambda hexdigest: session.reply(
                    Reply.FILE_STATUS,
                    f"SHA-256 0-{stat.size} {hexdigest} {parser.sanitize_reply_text(argument)}",
                )
            )

        return fs.stat(path).addCallback(digest).addErrback(session.fs_error)

    def ftp_MLST(self, argument: str) -> Deferred[None]:
        session = self.session
        path = session.resolve(argument or ".")

        def facts(stat: Stat) -> None:
            line = listing.format_mlst_reply_line(
                stat, session.state.mlst_facts, name=path, writable=not session.read_only
            )
            session.reply_raw(
                format_multiline(
                    Reply.FILE_ACTION_OK,
                    "Listing " + parser.sanitize_reply_text(path),
                    [line],
                    "End",
                )
            )

        return session.filesystem().stat(path).addCallbacks(facts, session.fs_error)
