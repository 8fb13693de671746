"""The fuzz and property tests of every entry point with a long budget (CI runs a short one).

    python benchmarks/fuzz_long.py [EXAMPLES]        # default 500 per test (slow ones: EXAMPLES / 5)

Sets MOESIM_FUZZ_EXAMPLES / MOESIM_FUZZ_SLOW_EXAMPLES and runs tests/test_fuzz_entry_points.py,
tests/test_fuzz_loader.py and tests/test_hardening.py; exits with pytest's code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    env = {**os.environ, "MOESIM_FUZZ_EXAMPLES": str(examples), "MOESIM_FUZZ_SLOW_EXAMPLES": str(max(examples // 5, 1))}
    tests = ["tests/test_fuzz_entry_points.py", "tests/test_fuzz_loader.py", "tests/test_hardening.py"]
    return subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
