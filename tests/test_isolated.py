"""The one-CPU child process's watchdog (phylojax.selection.isolated): a child that waits
without computing (the XLA:CPU deadlock's signature) is killed; a working one is left alone."""

import subprocess
import sys

import pytest

from phylojax.selection import isolated


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_watchdog_kills_an_idle_child_and_spares_a_busy_one():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reason = isolated._watch(idle, timeout=50.0, idle=2.0)
    assert reason is not None and "no CPU" in reason and idle.returncode is not None
    busy = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 4: pass"])
    assert isolated._watch(busy, timeout=50.0, idle=2.5) is None
    assert busy.returncode == 0
    slow = subprocess.Popen([sys.executable, "-c",
                             "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    reason = isolated._watch(slow, timeout=2.0, idle=10.0)
    assert reason is not None and "did not finish" in reason
