"""The clock guard asks the kernel; a clock in 1970 is never trusted."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gateway._clock import _adjtimex_synchronised, _timedatectl_synchronised, clock_synchronised


def test_a_1970_clock_is_never_synchronised() -> None:
    assert clock_synchronised(now=0.0) is False
    assert clock_synchronised(now=86400.0 * 365 * 30) is False      # 1999


def test_the_kernel_answers_and_the_guard_follows_it() -> None:
    kernel = _adjtimex_synchronised()
    assert kernel in (True, False), "adjtimex(2) should answer on Linux"
    assert clock_synchronised() is kernel


def test_timedatectl_agrees_with_adjtimex_where_it_answers() -> None:
    if shutil.which("timedatectl") is None:
        pytest.fail("timedatectl missing: install systemd (make test does on Debian)")
    probe = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                           capture_output=True, text=True, check=False)
    answer = _timedatectl_synchronised()
    if probe.returncode != 0:      # no systemd running (a container): it must say "unknown"
        assert answer is None
    else:
        assert answer is _adjtimex_synchronised()


def test_clock_state_reports_what_the_guard_decides_on() -> None:
    from gateway._clock import EARLIEST_TRUSTED, clock_state

    state = clock_state()
    assert state.source == "adjtimex"                 # Linux answers adjtimex(2)
    assert state.synchronised is _adjtimex_synchronised()
    assert state.max_error_s is not None and state.max_error_s >= 0
    assert state.est_error_s is not None and state.est_error_s >= 0
    assert state.trusted is (bool(state.synchronised) and state.now >= EARLIEST_TRUSTED)
    assert state.trusted is clock_synchronised(now=state.now)
