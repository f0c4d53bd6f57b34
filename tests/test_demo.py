"""The README's first command: `tenant-proxy demo`."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path


def test_demo_runs_and_cleans_up() -> None:
    exe = shutil.which("tenant-proxy")
    assert exe, "the tenant-proxy console script is not installed (pip install -e '.[dev]')"
    proc = subprocess.run([exe, "demo", "--no-wait", "--port", "0"], capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dsn = re.search(r"tenant-proxy as acme:\s+(postgresql://\S+)", proc.stdout)
    assert dsn and "acme:acme-password@127.0.0.1:" in dsn.group(1)
    # Each tenant sees only its own rows; the bypass role sees the whole table.
    assert "as acme    -> Road Runner (75.50), Wile E. Coyote (120.00)" in proc.stdout
    assert "as globex  -> Hank Scorpio (9999.99), Homer Simpson (12.00)" in proc.stdout
    assert "as migrate (bypass role) -> 4 customers in the table" in proc.stdout
    assert "acme writing a globex row is refused: 42501" in proc.stdout
    assert "token for tenant 2 sees: Hank Scorpio, Homer Simpson" in proc.stdout
    assert "Stopped PostgreSQL and removed its data directory." in proc.stdout
    base = re.search(r"throwaway PostgreSQL cluster in (\S+) \.\.\.", proc.stdout)
    assert base and not Path(base.group(1)).exists()


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    exe = shutil.which("tenant-proxy")
    assert exe
    proc = subprocess.Popen([exe, "demo", "--port", "0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "Press Ctrl-C" in line or not line:
            break
    assert any("Press Ctrl-C" in line for line in lines), lines
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Stopped PostgreSQL and removed its data directory." in rest
    base = re.search(r"throwaway PostgreSQL cluster in (\S+) \.\.\.", "".join(lines))
    assert base and not Path(base.group(1)).exists()
