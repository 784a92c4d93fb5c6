"""Argument parsing shared by the data command families.

Each `parse_*` helper either returns the parsed value or raises CommandError
with the reply Redis gives for that mistake, so a handler reads as a straight
line: parse everything, then write.

Numbers follow Redis' own parsers, not Python's: integers are what `string2ll`
accepts (optional '-', no '+', no spaces, no leading zeros, 64-bit range), and
floats are what `strtold` accepts (decimal or hex, inf, no NaN, no spaces).

Floats are computed as Redis computes them, in x87 80-bit long double (64-bit
significand), and printed as Redis prints INCRBYFLOAT results ("%.17Lf" with
trailing zeros removed). Python has no long double, so values are exact
`Fraction`s rounded to the 64-bit significand after every operation; this is
slow next to a float but keeps replies byte-identical to Redis
(INCRBYFLOAT of 0.1 on 10.5 is "10.6", of 0.2 on 0.1 is "0.3").
"""

from __future__ import annotations

import re
from fractions import Fraction

from kvorum.protocol.values import NOT_FLOAT, NOT_INTEGER, SYNTAX, CommandError

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
# Redis' LONG_STR_SIZE: a string this long or longer is never an integer.
INT_CHARS_MAX = 20
# Redis' MAX_LONG_DOUBLE_CHARS: a string this long or longer is never a float.
FLOAT_CHARS_MAX = 5 * 1024 - 1

# x87 extended precision: 64-bit significand, largest binary exponent 16383,
# smallest (subnormal) 2**-16445.
LD_SIGNIFICAND_BITS = 64
LD_EXPONENT_MAX = 16383
LD_EXPONENT_MIN = -16445

INF = float("inf")


def to_int(data: bytes) -> int | None:
    """The 64-bit integer `data` spells exactly as Redis' string2ll reads it, else None."""
    if not data or len(data) > INT_CHARS_MAX:
        return None
    try:
        value = int(data)
    except ValueError:
        return None
    # int() also takes '+', spaces, underscores and leading zeros; Redis does not.
    if b"%d" % value != data or not INT64_MIN <= value <= INT64_MAX:
        return None
    return value


def parse_int(data: bytes, error: str = NOT_INTEGER) -> int:
    value = to_int(data)
    if value is None:
        raise CommandError(error)
    return value


def parse_cursor(data: bytes) -> int:
    """A SCAN cursor: an unsigned 64-bit decimal (strtoull, no sign, no spaces)."""
    if not data.isdigit() or len(data) > INT_CHARS_MAX or int(data) >= 1 << 64:
        raise CommandError("ERR invalid cursor")
    return int(data)


def parse_count(data: bytes) -> int:
    """A SCAN COUNT: an integer >= 1."""
    value = parse_int(data)
    if value < 1:
        raise CommandError(SYNTAX)
    return value


def check_string_length(db, length: int) -> None:
    if length > db.proto_max_bulk_len:
        raise CommandError("ERR string exceeds maximum allowed size (proto-max-bulk-len)")


# ---------------------------------------------------------------- long double

_DECIMAL = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
_HEX = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?")
_INFINITY = re.compile(rb"([+-]?)(?i:inf|infinity)")

# Decimal exponents beyond these over- or underflow a long double whatever the
# digits (LDBL_MAX ~ 1.19e4932, smallest subnormal ~ 3.6e-4951).
_DECIMAL_EXPONENT_MAX = 4940
_DECIMAL_EXPONENT_MIN = -4970


def to_long_double(data: bytes) -> Fraction | float | None:
    """What Redis' string2ld reads from `data`: an exact Fraction, +-inf, or None."""
    if not data or len(data) > FLOAT_CHARS_MAX:
        return None
    m = _DECIMAL.fullmatch(data)
    if m is not None:
        return _decimal_value(*m.groups())
    m = _HEX.fullmatch(data)
    if m is not None:
        return _hex_value(*m.groups())
    m = _INFINITY.fullmatch(data)
    if m is not None:
        return -INF if m.group(1) == b"-" else INF
    return None


def _decimal_value(sign: bytes, whole: bytes, frac: bytes | None, exp: bytes | None):
    frac = frac or b""
    if not whole and not frac:
        return None
    digits = (whole + frac).lstrip(b"0")
    if not digits:
        return Fraction(0)
    exponent = int(exp) if exp else 0
    # The value is 0.<digits> * 10**magnitude: refuse overflow and underflow
    # before building huge integers.
    magnitude = exponent + len(whole) - (len(whole + frac) - len(digits))
    if magnitude > _DECIMAL_EXPONENT_MAX or magnitude < _DECIMAL_EXPONENT_MIN:
        return None
    scale = exponent - len(frac)
    value = Fraction(int(whole + frac) * 10**scale) if scale >= 0 else Fraction(int(whole + frac), 10**-scale)
    return _checked(-value if sign == b"-" else value)


def _hex_value(sign: bytes, whole: bytes, frac: bytes | None, exp: bytes | None):
    frac = frac or b""
    if not whole and not frac:
        return None
    mantissa = int(whole + frac, 16) if whole + frac else 0
    if not mantissa:
        return Fraction(0)
    exponent = (int(exp) if exp else 0) - 4 * len(frac)
    top = mantissa.bit_length() + exponent
    if top > LD_EXPONENT_MAX + 2 or top < LD_EXPONENT_MIN - 2:
        return None
    value = Fraction(mantissa << exponent) if exponent >= 0 else Fraction(mantissa, 1 << -exponent)
    return _checked(-value if sign == b"-" else value)


def _checked(value: Fraction) -> Fraction | None:
    """strtold's result: rounded to long double; overflow and underflow refused."""
    rounded = round_long_double(value)
    if rounded is None or (rounded == 0 and value != 0):
        return None
    return rounded


def round_long_double(value: Fraction) -> Fraction | None:
    """`value` rounded (half to even) to a 64-bit significand; None on overflow."""
    if value == 0:
        return value
    num = abs(value.numerator)
    den = value.denominator
    exponent = num.bit_length() - den.bit_length() - LD_SIGNIFICAND_BITS
    if exponent >= 0:
        den <<= exponent
    else:
        num <<= -exponent
    # Bring num/den into [2**63, 2**64).
    while num >= den << LD_SIGNIFICAND_BITS:
        den <<= 1
        exponent += 1
    while num < den << (LD_SIGNIFICAND_BITS - 1):
        num <<= 1
        exponent -= 1
    if exponent + LD_SIGNIFICAND_BITS - 1 < LD_EXPONENT_MIN:
        return Fraction(0)
    significand, rest = divmod(num, den)
    if rest * 2 > den or (rest * 2 == den and significand & 1):
        significand += 1
    if exponent + significand.bit_length() - 1 > LD_EXPONENT_MAX:
        return None
    magnitude = Fraction(significand << exponent) if exponent >= 0 else Fraction(significand, 1 << -exponent)
    return magnitude if value > 0 else -magnitude


def parse_long_double(data: bytes) -> Fraction | float:
    value = to_long_double(data)
    if value is None:
        raise CommandError(NOT_FLOAT)
    return value


def add_long_double(a: Fraction | float, b: Fraction | float) -> Fraction | None:
    """a + b in long double; None when the sum is NaN or infinite."""
    if isinstance(a, float) or isinstance(b, float):
        return None
    return round_long_double(a + b)


def format_long_double(value: Fraction) -> bytes:
    """Redis' ld2string(LD_STR_HUMAN): "%.17Lf" without trailing zeros, never "-0"."""
    scaled = round(value * 10**17)
    if scaled == 0:
        return b"0"
    digits = b"%018d" % abs(scaled)
    text = digits[:-17] + b"." + digits[-17:]
    text = text.rstrip(b"0").rstrip(b".")
    return b"-" + text if scaled < 0 else text
