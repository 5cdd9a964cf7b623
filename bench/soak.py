"""`make soak`: a bounded soak through the real Envoy with state churning; results in bench/results/soak.*.

`python bench/soak.py [SECONDS] [RATE]` (defaults: 120 s at 150 req/s).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.dev.soak import run_soak, write_results  # noqa: E402


def main() -> int:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 120
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 150
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        init_demo(demo)
        report = run_soak(demo, ROOT / "envoy.yaml", Path(tmp) / "run", seconds=seconds, rate=rate)
    write_results(report, ROOT / "bench" / "results", f"{os.cpu_count()} cores")
    print((ROOT / "bench/results/soak.md").read_text())
    ok = report.errors == 0 and report.envoy_ext_authz_errors == 0 and not report.violations
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
