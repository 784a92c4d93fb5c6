"""RESP2/RESP3 framing: request parsing (hiredis plus Redis' exact rules) and reply encoding."""

from kvorum.protocol.encoder import encode, error_line
from kvorum.protocol.parser import RequestParser

__all__ = ["RequestParser", "encode", "error_line"]
