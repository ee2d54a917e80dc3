"""Known vulnerabilities in the test environment's installed dependencies, with pip-audit (PyPI's advisory data):
exits 1 naming each vulnerable package, 0 otherwise. When no package could be looked up at all (PyPI's JSON API,
the database pip-audit reads, is not reachable from this machine), it says so and exits 0: the suite itself needs no
network. Run by scripts/test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

AUDIT = Path(sys.executable).with_name("pip-audit")


def main() -> int:
    run = subprocess.run([str(AUDIT), "--format", "json", "--skip-editable", "--progress-spinner", "off",
                          "--timeout", "15"], capture_output=True, text=True, check=False)
    try:
        report = json.loads(run.stdout)
    except ValueError:
        print(f"scripts/audit: pip-audit failed: {run.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return 1
    dependencies = report.get("dependencies", [])
    audited = [d for d in dependencies if "skip_reason" not in d]
    vulnerable = [d for d in audited if d.get("vulns")]
    for dependency in vulnerable:
        ids = ", ".join(v["id"] for v in dependency["vulns"])
        print(f"scripts/audit: {dependency['name']} {dependency['version']}: {ids}", file=sys.stderr)
    if vulnerable:
        return 1
    if not audited:
        print("scripts/audit: pip-audit skipped: no dependency could be looked up (PyPI's JSON API, its vulnerability "
              "database, is not reachable from here)", file=sys.stderr)
        return 0
    skipped = len(dependencies) - len(audited)
    print(f"scripts/audit: {len(audited)} dependencies audited, no known vulnerability"
          + (f" ({skipped} not found on PyPI)" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
