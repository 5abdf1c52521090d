"""Access tokens never leave a process: masking for lines, messages and log records.

Synapse access tokens look like ``syt_<base64 user>_<random>_<crc>``. They travel in
``USER_IP`` commands, and a handler's exception, a driver error or a malformed line can
quote one anywhere. Every log line (through :class:`MaskingFormatter`, which the CLI
installs on its log handler), every one-line error, every dead-letter header and reason
goes through :func:`mask_access_tokens`.

Pure: regular expressions and the standard library's ``logging`` only.
"""

from __future__ import annotations

import logging
import re
from typing import Final

__all__ = ["MASK", "MaskingFormatter", "mask_access_tokens", "mask_user_ip_line"]

MASK: Final = "***"

_SYT_RE: Final = re.compile(r"syt_[A-Za-z0-9_\-=.]+")
# Every JSON string of a USER_IP line: the first is the token whatever its shape, and a
# malformed line may have it anywhere.
_JSON_STRING_RE: Final = re.compile(r'"(?:[^"\\]|\\.)*"?')
_USER_IP_RE: Final = re.compile(r"^\s*USER_IP\b")


def mask_user_ip_line(line: str) -> str:
    """Return ``line`` with every JSON string masked (for anything off a USER_IP channel)."""
    return _JSON_STRING_RE.sub(f'"{MASK}"', line)


def mask_access_tokens(text: str) -> str:
    """Return ``text`` with every access token replaced by ``***``.

    In a ``USER_IP`` line every JSON string is masked (the access token is the first
    one when the line is well formed; in a malformed line it could be any); elsewhere
    only Synapse-shaped tokens (``syt_...``) are.
    """
    if _USER_IP_RE.match(text):
        text = mask_user_ip_line(text)
    if "syt_" not in text:
        return text
    return _SYT_RE.sub(f"syt_{MASK}", text)


class MaskingFormatter(logging.Formatter):
    """A formatter whose output, traceback included, has its access tokens masked."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then mask (a log line may quote anything)."""
        return mask_access_tokens(super().format(record))
