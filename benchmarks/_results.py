"""Where every benchmark writes its figures: benchmarks/results/<name>.json (skipped for --quick runs)."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def write_results(name: str, report: dict, quick: bool) -> None:
    if quick:
        return
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
