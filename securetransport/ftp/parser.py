"""Sans-IO parsing of the FTP control channel: bytes in, command lines and commands out.

`LineBuffer` splits the byte stream into lines (CRLF or bare LF), strips Telnet
IAC sequences and enforces `MAX_LINE`; `parse_command` turns one line into a
`Command` or a `ParseError` carrying the reply to send. Nothing here raises on
client input.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LINE = 4096  # bytes in a command line, without its line end

IAC = 0xFF
_WILL, _WONT, _DO, _DONT = 251, 252, 253, 254
_TELNET_COMMANDS_MIN = 240  # SE; IAC followed by a byte below this is no Telnet command

_CR = 0x0D
_LF = b"\n"

# Telnet decoder states, kept across feed() calls.
_DATA = 0
_AFTER_IAC = 1  # saw IAC
_AFTER_OPTION_VERB = 2  # saw IAC WILL/WONT/DO/DONT, the option byte follows


@dataclass(frozen=True)
class ParseError:
    """A command line that cannot be served; `code` and `text` are the reply to send."""

    code: int
    text: str


@dataclass(frozen=True)
class LineTooLong(ParseError):
    """Marker from `LineBuffer.feed`: a line went over `MAX_LINE` (reply 500, go on)."""

    code: int = 500
    text: str = f"Command line too long (max {MAX_LINE} bytes)"


@dataclass(frozen=True)
class Command:
    """One parsed command line."""

    verb: str  # upper-cased ASCII letters, 3 or 4 of them
    argument: str | None  # everything after the first space, or None
    raw: bytes  # the line as received (Telnet sequences removed), without its line end


class LineBuffer:
    """Split control-channel bytes into lines.

    - A line ends at LF; one CR right before the LF is dropped too.
    - Telnet: IAC IAC is a literal 0xFF byte; IAC WILL/WONT/DO/DONT <option> and
      IAC <any other command byte 240-254> (IP, DM, SB, SE, NOP...) are removed.
      An IAC followed by a byte below 240 is no Telnet command: only the IAC is
      removed (this is what is left of "IAC IP IAC DM ABOR" when the kernel took
      the DM out of band).
    - A line longer than `MAX_LINE` bytes yields one `LineTooLong` as soon as the
      limit is passed; the rest of that line, up to its LF, is discarded.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False
        self._telnet = _DATA

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held in the buffer."""
        return len(self._buffer)

    def clear(self) -> None:
        """Drop everything buffered (after AUTH TLS: nothing sent in clear may survive).

        Lines already returned by `feed` are the caller's: after AUTH TLS the caller
        must also drop the ones it has not served yet.
        """
        self._buffer.clear()
        self._discarding = False
        self._telnet = _DATA

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        """Add received bytes; return the lines completed by them, in order."""
        clean = self._strip_telnet(data)
        out: list[bytes | LineTooLong] = []
        start = 0
        while True:
            end = clean.find(_LF, start)
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                self._buffer += clean[start:end]
                if self._buffer.endswith(b"\r"):
                    del self._buffer[-1]
                if len(self._buffer) > MAX_LINE:
                    out.append(LineTooLong())
                else:
                    out.append(bytes(self._buffer))
            self._buffer.clear()
            start = end + 1
        if not self._discarding and start < len(clean):
            self._buffer += clean[start:]
            if self._over_limit():
                out.append(LineTooLong())
                self._buffer.clear()
                self._discarding = True
        return out

    def _over_limit(self) -> bool:
        # MAX_LINE + 1 bytes ending in CR may still be a MAX_LINE line whose LF is late.
        size = len(self._buffer)
        if size > MAX_LINE + 1:
            return True
        return size == MAX_LINE + 1 and self._buffer[-1] != _CR

    def _strip_telnet(self, data: bytes) -> bytes:
        if self._telnet == _DATA and IAC not in data:
            return data
        out = bytearray()
        state = self._telnet
        position = 0
        size = len(data)
        while position < size:
            if state == _DATA:
                iac = data.find(IAC, position)
                if iac < 0:
                    out += data[position:]
                    break
                out += data[position:iac]
                position = iac + 1
                state = _AFTER_IAC
                continue
            byte = data[position]
            if state == _AFTER_IAC:
                if byte == IAC:
                    out.append(IAC)
                    state = _DATA
                elif byte in (_WILL, _WONT, _DO, _DONT):
                    state = _AFTER_OPTION_VERB
                elif byte >= _TELNET_COMMANDS_MIN:
                    state = _DATA
                else:
                    out.append(byte)
                    state = _DATA
            else:  # _AFTER_OPTION_VERB: the option byte is dropped
                state = _DATA
            position += 1
        self._telnet = state
        return bytes(out)


_SYNTAX_ERROR = ParseError(500, "Syntax error, command unrecognized")
_BAD_UTF8 = ParseError(501, "Invalid UTF-8 in argument")


def _is_verb(verb: bytes) -> bool:
    return 3 <= len(verb) <= 4 and verb.isascii() and verb.isalpha()


def parse_command(line: bytes) -> Command | ParseError:
    """Parse one command line (its line end, if still there, is ignored).

    The verb is 3-4 ASCII letters, case-insensitive (else 500). The argument is
    everything after the first space, spaces kept, decoded as strict UTF-8
    (else 501); a verb with nothing after it, or with only one space, has no argument.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    if not line:
        return _SYNTAX_ERROR
    verb, separator, rest = line.partition(b" ")
    if not _is_verb(verb):
        return _SYNTAX_ERROR
    argument: str | None = None
    if separator and rest:
        try:
            argument = rest.decode("utf-8")
        except UnicodeDecodeError:
            return _BAD_UTF8
    return Command(verb=verb.decode("ascii").upper(), argument=argument, raw=line)


def sanitize_reply_text(text: str) -> str:
    """Replace CR, LF and NUL by "?": text echoed in a reply can never start a new line."""
    return text.replace("\r", "?").replace("\n", "?").replace("\0", "?")


def quote_path(path: str) -> str:
    """Quote a path for a 257 reply (RFC 959): double every quote, wrap in quotes."""
    return '"' + sanitize_reply_text(path).replace('"', '""') + '"'
