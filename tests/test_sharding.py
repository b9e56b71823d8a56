"""Sharded lnL and gradients on 4 forced host devices equal the single-device values."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).parent


@pytest.mark.slow
def test_four_devices_match_one():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, str(HERE / "sharding_check.py"), str(HERE / "data" / "lik" / "sim7.fa"),
         str(HERE / "data" / "lik" / "sim7.nwk")],
        capture_output=True, text=True, env=env, timeout=600, check=True,
    )  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["shards"] == 4
    for one, many in zip(result["single"], result["multi"]):
        np.testing.assert_allclose(many, one, rtol=1e-11, atol=1e-9)
    for one, many in zip(result["batched_single"], result["batched_multi"]):
        np.testing.assert_allclose(many, one, rtol=1e-11, atol=1e-9)
    # lnL of sim7 under GTR{1.5,4,0.8,1.2,5}+F{.3,.2,.25,.25}+I{.1}+G4{.7}: a real number.
    assert np.isfinite(result["single"][0][0])
