"""Seconds to record the whole lesson afresh, then seconds for a rerun with nothing changed, and the fast path's
ratio (DataLoader loop time / tensors-on-the-device time) as that recording printed it."""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tools.record", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "outputs"
        first = timed("--device", args.device, "--force", "--out", str(out))
        rerun = timed("--device", args.device, "--out", str(out))
        recordings = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))}
        per_snippet = {name: data["seconds"] for name, data in recordings.items()}
        compare = next((c["stdout"] for c in recordings.get("fast_path", {}).get("cells", []) if c["name"] == "compare"),
                       "")
    for name, seconds in per_snippet.items():
        print(f"{name:<20} {seconds:6.1f} s")
    print(f"whole lesson, recorded afresh: {first:.1f} s")
    print(f"rerun with nothing changed:    {rerun:.2f} s")
    ratio = re.search(r"fast path is ([\d.]+)x faster", compare)
    print(f"fast path ratio:               {ratio[1] if ratio else '?'}x")


if __name__ == "__main__":
    main()
