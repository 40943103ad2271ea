"""``bench/traffic_centre.py`` runs end to end on a short stretch, and its moving centres do what
the README says of them: under a provider-side day cycle they take the cycle out of the latency
per token chart's between-minute sd (behaviour, not the figures: those are from a full run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "traffic_centre.py"


def test_moving_centres_narrow_a_provider_cycles_tau() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH), "5", "0,-1,120", "1", "1700", "1", "provider"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    tau = {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r"provider cycle, (frozen \(now\)|time-of-day|EWMA T=120): lpt tau ([\d.]+)", out.stdout
        )
    }
    assert set(tau) == {"frozen (now)", "time-of-day", "EWMA T=120"}, out.stdout
    assert tau["time-of-day"] < 0.6 * tau["frozen (now)"]
    assert tau["EWMA T=120"] < 0.8 * tau["frozen (now)"]
    assert len(re.findall(r"false alarms per 100,000 minutes [\d.]+", out.stdout)) == 3
    assert len(re.findall(r"1\.5x detected \d+/1", out.stdout)) == 3


def test_its_command_line_says_what_each_argument_is_and_names_a_bad_one() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120, check=False
        )

    out = run("--help")  # took "--help" for the rate: ValueError, exit 1
    assert out.returncode == 0, out.stderr
    for name in ("rate", "centres", "trials", "fa_minutes", "seeds", "cycles"):
        assert name in out.stdout
    for args, said in [
        ((), "the following arguments are required: rate, centres"),
        (("5", "0,x"), "argument centres: '0,x'"),
        (("5", "0", "1", "0", "1", "theirs"), "argument cycles: theirs"),
        (("5", "0", "1", "100"), "argument fa_minutes: 100"),  # counted nothing, a negative rate
    ]:
        out = run(*args)
        assert out.returncode == 2, (args, out.stdout)
        assert said in out.stderr, (args, out.stderr)
