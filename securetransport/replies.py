"""FTP reply codes and their standard texts, in one place (RFC 959, 2228, 2428, 3659, 4217)."""

from __future__ import annotations

from enum import IntEnum


class Reply(IntEnum):
    RESTART_MARKER = 110
    DATA_ALREADY_OPEN = 125
    OPENING_DATA = 150
    OK = 200
    SUPERFLUOUS = 202
    SYSTEM_STATUS = 211
    FILE_STATUS = 213
    HELP = 214
    SYSTEM_TYPE = 215
    SERVICE_READY = 220
    CLOSING_CONTROL = 221
    DATA_OPEN_NO_TRANSFER = 225
    TRANSFER_COMPLETE = 226
    PASSIVE = 227
    LONG_PASSIVE = 228
    EXTENDED_PASSIVE = 229
    LOGGED_IN = 230
    LOGGED_IN_CERTIFICATE = 232
    AUTH_OK = 234
    FILE_ACTION_OK = 250
    PATH_CREATED = 257
    NEED_PASSWORD = 331
    NEED_ACCOUNT = 332
    PENDING_FURTHER_INFO = 350
    SERVICE_UNAVAILABLE = 421
    CANT_OPEN_DATA = 425
    TRANSFER_ABORTED = 426
    ACTION_UNAVAILABLE = 450
    LOCAL_ERROR = 451
    INSUFFICIENT_STORAGE = 452
    SYNTAX_ERROR = 500
    SYNTAX_ERROR_ARGS = 501
    NOT_IMPLEMENTED = 502
    BAD_SEQUENCE = 503
    NOT_IMPLEMENTED_PARAMETER = 504
    PROT_NOT_ALLOWED = 521
    DATA_TLS_FAILED = 522
    NETWORK_PROTOCOL_NOT_SUPPORTED = 522  # RFC 2428 (an alias of the same code)
    NOT_LOGGED_IN = 530
    CCC_REFUSED = 533
    POLICY_DENIED = 534
    PROT_NOT_SUPPORTED = 536
    FILE_UNAVAILABLE = 550
    PAGE_TYPE_UNKNOWN = 551
    EXCEEDED_STORAGE = 552
    FILE_NAME_NOT_ALLOWED = 553
    BAD_RESTART = 554


def format_reply(code: int, text: str) -> bytes:
    """One reply, single- or multi-line (RFC 959 section 4.2), CRLF-terminated.

    Lines of a multi-line reply after the first are indented by one space, so a
    line can never look like a final `NNN ` line.
    """
    lines = text.split("\n")
    if len(lines) == 1:
        return f"{code} {lines[0]}\r\n".encode()
    out = [f"{code}-{lines[0]}"]
    out += [" " + line for line in lines[1:]]
    out.append(f"{code} End")
    return ("\r\n".join(out) + "\r\n").encode()


def format_multiline(code: int, first: str, body: list[str], last: str) -> bytes:
    """A multi-line reply whose body lines are given verbatim (each must start with a space)."""
    out = [f"{code}-{first}", *body, f"{code} {last}"]
    return ("\r\n".join(out) + "\r\n").encode()
