"""How fast `finetune-operator` acts: apply -> RayJob, and RayJob status -> FineTuneJob status.

Runs the operator as its own process against kmock's Kubernetes emulator with the real CRDs
(the same set-up as tests/integration/operator) and prints median, p90 and max latencies.
Usage: python bench/operator_latency.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/integration/operator/test_operator_latency.py"

if __name__ == "__main__":
    command = [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"]
    raise SystemExit(subprocess.call(command, cwd=ROOT))
