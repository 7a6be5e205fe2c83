"""Unified social credit codes: GB 32100-2015 check character, GB 11714 organisation check."""

from __future__ import annotations

import pytest

from protocol import (
    CREDIT_ALPHABET,
    CreditCodeError,
    credit_check_char,
    make_credit_code,
    org_code_check_char,
    validate_credit_code,
)

# Real codes, each confirmed from a published source (not from memory):
REAL_CODES = [
    # Huawei Technologies Co., Ltd. — zh.wikipedia.org/zh-hk/華爲, infobox 機構代碼.
    "914403001922038216",
    # Tencent Technology (Shenzhen) Co., Ltd. — chinacheckup.com/blogs/articles/
    # unified-social-credit-code (Matt Slater, 2018-08-27), examples list.
    "9144030071526726XG",
    # China Petroleum & Chemical Corporation (Sinopec) — same chinacheckup.com article.
    "91110000710926094P",
    # Baoshan Iron and Steel Co., Ltd. — same chinacheckup.com article.
    "91310000631696382C",
    # Shenzhen Tencent Computer Systems Co., Ltd. — check-china.com/example_report/en/8,
    # "Unified social credit code" and "Taxpayer identification number" fields.
    "91440300708461136T",
    # The format example of the English Wikipedia article "Unified Social Credit Identifier"
    # (a Fuzhou code; its organisation code is of the newer letter form M000100Y4).
    "91350100M000100Y43",
]

# CONTRACT.md's sample unit: its 18th character is right, its organisation code's is not.
CONTRACT_SAMPLE = "91320100MA1ABCDE0C"


@pytest.mark.parametrize("code", REAL_CODES)
def test_real_codes_pass_both_checks(code: str) -> None:
    assert validate_credit_code(code, strict=True) == code
    assert credit_check_char(code[:17]) == code[17]
    assert org_code_check_char(code[8:16]) == code[16]


@pytest.mark.parametrize("code", REAL_CODES)
def test_every_single_character_change_of_a_real_code_fails(code: str) -> None:
    # A mod-31 check with weights coprime to 31 catches every single substitution.
    for pos in range(18):
        for char in CREDIT_ALPHABET:
            if char == code[pos]:
                continue
            mutated = code[:pos] + char + code[pos + 1:]
            if pos in range(2, 8) and not char.isdigit():
                with pytest.raises(CreditCodeError, match="must be a digit"):
                    validate_credit_code(mutated)
                continue
            with pytest.raises(CreditCodeError) as info:
                validate_credit_code(mutated)
            assert info.value.position == 18


@pytest.mark.parametrize("code", REAL_CODES)
def test_every_adjacent_transposition_in_the_body_is_caught(code: str) -> None:
    # Weights of neighbours differ and 31 is prime: swapping two different characters of
    # positions 9-17 always changes the check.
    for pos in range(8, 16):
        if code[pos] == code[pos + 1]:
            continue
        swapped = code[:pos] + code[pos + 1] + code[pos] + code[pos + 2:]
        with pytest.raises(CreditCodeError, match=r"check character \(18\) should be"):
            validate_credit_code(swapped)


def test_normalises_case_and_whitespace() -> None:
    assert validate_credit_code("  9144030071526726xg\n") == "9144030071526726XG"


@pytest.mark.parametrize(
    ("code", "message", "position"),
    [
        ("91440300192203821", "has 17", None),
        ("9144030019220382161", "has 19", None),
        ("", "has 0", None),
        ("91440300192203821I", r"character 18 \('I'\) is not allowed", 18),
        ("9144030019220O8216", r"character 14 \('O'\) is not allowed", 14),
        ("9S4403001922038216", r"character 2 \('S'\) is not allowed", 2),
        ("914A03001922038216", r"character 4 \('A'\) must be a digit", 4),
        ("914403001922038217", r"check character \(18\) should be '6', got '7'", 18),
    ],
)
def test_errors_say_what_is_wrong(code: str, message: str, position: int | None) -> None:
    with pytest.raises(CreditCodeError, match=message) as info:
        validate_credit_code(code)
    assert info.value.position == position
    assert isinstance(info.value, ValueError)


def test_check_error_carries_expected_and_got() -> None:
    with pytest.raises(CreditCodeError) as info:
        validate_credit_code("9144030071526726XA")
    assert (info.value.expected, info.value.got, info.value.position) == ("G", "A", 18)


def test_check_value_31_is_written_zero() -> None:
    # Find a 17-character body whose weighted sum is 0 mod 31: the check is then '0'.
    body = "91320100MA1ABCDE8"
    for char in CREDIT_ALPHABET:
        candidate = body[:16] + char
        if credit_check_char(candidate) == "0":
            break
    else:
        pytest.fail("no body with check '0' among 31 variants of the last character")
    assert validate_credit_code(candidate + "0") == candidate + "0"


def test_contract_sample_unit() -> None:
    # The 18th character is valid, so CONTRACT.md's sample passes the standard check ...
    assert validate_credit_code(CONTRACT_SAMPLE) == CONTRACT_SAMPLE
    # ... but its organisation code MA1ABCDE has check character 8, not 0.
    with pytest.raises(CreditCodeError, match=r"\(17\) should be '8', got '0'"):
        validate_credit_code(CONTRACT_SAMPLE, strict=True)


@pytest.mark.parametrize(
    ("body", "check"),
    [("19220382", "1"), ("71526726", "X"), ("71092609", "4"), ("M000100Y", "4"),
     ("MA1ABCDE", "8")],
)
def test_org_code_check_char(body: str, check: str) -> None:
    assert org_code_check_char(body) == check


def test_org_code_check_special_values() -> None:
    assert org_code_check_char("00000000") == "0"   # sum 0: 11 - 0 = 11 is written '0'
    assert org_code_check_char("40000000") == "X"   # sum 12 ≡ 1: 11 - 1 = 10 is written 'X'
    assert org_code_check_char("00000001") == "9"   # sum 2: 11 - 2 = 9


def test_org_code_body_must_be_eight_characters() -> None:
    with pytest.raises(CreditCodeError, match="8 of 0-9 A-Z"):
        org_code_check_char("1234567")
    with pytest.raises(CreditCodeError, match="8 of 0-9 A-Z"):
        org_code_check_char("1234567*")


def test_credit_check_char_needs_17_characters() -> None:
    with pytest.raises(CreditCodeError, match="got 18"):
        credit_check_char("914403001922038216")


def test_make_credit_code_computes_both_checks() -> None:
    code = make_credit_code()
    assert code == "91320100MA1ABCDE85"
    assert validate_credit_code(code, strict=True) == code
    assert make_credit_code(region="440300", org="19220382") == REAL_CODES[0]
    assert make_credit_code(region="440300", org="71526726X") == "9144030071526726XG"


def test_make_credit_code_rejects_a_wrong_org_check_and_bad_parts() -> None:
    with pytest.raises(CreditCodeError, match="check character should be '8', got '0'"):
        make_credit_code(org="MA1ABCDE0")
    with pytest.raises(CreditCodeError, match="6-digit division code"):
        make_credit_code(region="3201")
    with pytest.raises(CreditCodeError, match="8-character"):
        make_credit_code(org="MA1")
    with pytest.raises(CreditCodeError, match="not allowed"):
        make_credit_code(org="MA1ABCDI")  # I is valid in GB 11714 but not in GB 32100


def test_generated_codes_round_trip() -> None:
    for i in range(200):
        body = f"{i % 100:02d}" + CREDIT_ALPHABET[i % 31] * 3 + f"{i * 7 % 1000:03d}"
        code = make_credit_code(region="110108", org=body)
        assert validate_credit_code(code, strict=True) == code
