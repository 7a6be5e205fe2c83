"""Unified social credit codes (统一社会信用代码, GB 32100-2015): check and make.

An enterprise is identified upstream by its 18-character code::

    position  1      registration authority code (登记管理部门码), e.g. 9 = market regulation
              2      organisation category code (机构类别码), e.g. 1 = enterprise
              3-8    administrative division code of the registering authority (GB/T 2260)
              9-17   organisation code (主体标识码, GB 11714): 8 characters + its own check
              18     check character over positions 1-17

Characters come from 0-9 and the upper-case letters except I, O, Z, S, V (31 in all, valued
0..30 in the order of :data:`CREDIT_ALPHABET`). GB 32100-2015 §4.2.5:
check = 31 - (Σ value(c_i) × w_i mod 31), with weights w_i = 3^(i-1) mod 31, and 31 written '0'.

Positions 9-17 carry the GB 11714 check character of the organisation code: weights
3 7 9 10 5 8 4 2 over the first 8 characters (digits 0-9, letters A=10 … Z=35),
check = 11 - (sum mod 11), 10 written 'X', 11 written '0'. :func:`validate_credit_code`
verifies it only with ``strict=True``: the 18th character is what the standard and the platforms
check, and sample codes in use (CONTRACT.md's) satisfy only that one.

Errors: ``CreditCodeError(ValueError)`` with ``code``, ``position`` (1-based or None),
``expected`` and ``got`` saying exactly what is wrong.
"""

from __future__ import annotations

import logging

__all__ = [
    "CREDIT_ALPHABET",
    "CreditCodeError",
    "credit_check_char",
    "make_credit_code",
    "org_code_check_char",
    "validate_credit_code",
]

log = logging.getLogger(__name__)

# GB 32100-2015 §4.1: code characters (no I, O, Z, S, V), valued by their index here.
CREDIT_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE = {c: i for i, c in enumerate(CREDIT_ALPHABET)}
# GB 32100-2015 §4.2.5: weights of positions 1-17 (3^(i-1) mod 31).
_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
# GB 11714-1997 (organisation code): weights of the code's 8 body characters.
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_ORG_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LENGTH = 18


class CreditCodeError(ValueError):
    """A unified social credit code is malformed; the message says what and where."""

    def __init__(self, message: str, *, code: str, position: int | None = None,
                 expected: str | None = None, got: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.position = position
        self.expected = expected
        self.got = got


def credit_check_char(first17: str) -> str:
    """The GB 32100 check character (position 18) for the first 17 characters."""
    body = first17.strip().upper()
    if len(body) != _LENGTH - 1:
        raise CreditCodeError(
            f"need the first 17 characters of a credit code, got {len(body)}: {first17!r}",
            code=first17)
    _check_alphabet(body, first17)
    total = sum(_VALUE[c] * w for c, w in zip(body, _WEIGHTS, strict=True))
    return CREDIT_ALPHABET[(31 - total % 31) % 31]


def org_code_check_char(body8: str) -> str:
    """The GB 11714 check character of an organisation code's first 8 characters."""
    body = body8.strip().upper()
    if len(body) != 8 or any(c not in _ORG_CHARS for c in body):
        raise CreditCodeError(
            f"an organisation code body is 8 of 0-9 A-Z, got {body8!r}", code=body8)
    total = sum(_ORG_CHARS.index(c) * w for c, w in zip(body, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return {10: "X", 11: "0"}.get(check, str(check))


def validate_credit_code(code: str, *, strict: bool = False) -> str:
    """The code normalised (stripped, upper-case), or ``CreditCodeError`` saying what is wrong.

    Checks length, alphabet, that positions 3-8 are digits, and the check character (18).
    With ``strict=True`` also the organisation code's own check character (position 17).
    """
    norm = code.strip().upper()
    if len(norm) != _LENGTH:
        raise CreditCodeError(
            f"a unified social credit code has 18 characters, {code!r} has {len(norm)}",
            code=code)
    _check_alphabet(norm, code)
    for pos in range(3, 9):
        if not norm[pos - 1].isdigit():
            raise CreditCodeError(
                f"{code!r}: character {pos} ({norm[pos - 1]!r}) must be a digit "
                "(positions 3-8 are the administrative division code)",
                code=code, position=pos, got=norm[pos - 1])
    expected = credit_check_char(norm[:17])
    if norm[17] != expected:
        raise CreditCodeError(
            f"{code!r}: check character (18) should be {expected!r}, got {norm[17]!r}",
            code=code, position=18, expected=expected, got=norm[17])
    if strict:
        org_expected = org_code_check_char(norm[8:16])
        if norm[16] != org_expected:
            raise CreditCodeError(
                f"{code!r}: organisation code check character (17) should be "
                f"{org_expected!r}, got {norm[16]!r}",
                code=code, position=17, expected=org_expected, got=norm[16])
    return norm


def make_credit_code(region: str = "320100", org: str = "MA1ABCDE", *,
                     authority: str = "9", category: str = "1") -> str:
    """A valid code from its parts, both check characters computed (for tests and demos).

    ``org`` is the organisation code body (8 characters); a 9th character, if given, must
    already be its correct GB 11714 check character.
    """
    region = region.strip()
    if len(region) != 6 or not region.isdigit():
        raise CreditCodeError(f"region must be a 6-digit division code, got {region!r}",
                              code=region)
    body = org.strip().upper()
    if len(body) not in (8, 9):
        raise CreditCodeError(f"org must be an 8-character organisation code body, got {org!r}",
                              code=org)
    org_check = org_code_check_char(body[:8])
    if len(body) == 9 and body[8] != org_check:
        raise CreditCodeError(
            f"organisation code {org!r}: check character should be {org_check!r}, "
            f"got {body[8]!r}", code=org, position=9, expected=org_check, got=body[8])
    first17 = f"{authority}{category}{region}{body[:8]}{org_check}".upper()
    return validate_credit_code(first17 + credit_check_char(first17), strict=True)


def _check_alphabet(norm: str, original: str) -> None:
    for pos, char in enumerate(norm, start=1):
        if char not in _VALUE:
            raise CreditCodeError(
                f"{original!r}: character {pos} ({char!r}) is not allowed "
                "(0-9 and A-Z except I, O, Z, S, V)",
                code=original, position=pos, got=char)
