"""`kemon demo` (what `make demo` runs) from start to end: live site, then the time-lapse."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, kemon_cmd


@pytest.mark.slow
def test_demo_runs_the_chain_and_shows_consumption(tmp_path: Path) -> None:
    # a relative --dir, as `make demo` gives it (demo-data, from the checkout)
    res = subprocess.run(kemon_cmd("demo", "--dir", "demo", "--duration", "8"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=180, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = res.stdout
    assert res.returncode == 0, res.stderr + out
    assert "demo: gateway stopped (exit 0)" in out
    live = re.findall(r"^  \S+\s+(\S+)\s+instant\s+[\d.]+\s+good$", out, re.M)
    assert "0000000001000001" in set(live)
    assert re.search(r"meter spare .* (OFFLINE|FAILING) ", out)
    assert re.search(r"meter incomer .* online", out)
    quarters = re.findall(r"^  \S+ \S+ 15min\s+(\S+)\s+([\d.]+) kWh\s+=\s+([\d.]+) tce  good$",
                          out, re.M)
    hours = re.findall(r"^  \S+ \S+ hour\s+(\S+)\s+([\d.]+) kWh", out, re.M)
    assert len(quarters) >= 8 and len(hours) >= 2, out
    for _, kwh, tce in quarters:        # GB/T 2589: 0.1229 kgce per kWh
        assert float(tce) == pytest.approx(float(kwh) * 0.1229 / 1000, abs=1e-5)
