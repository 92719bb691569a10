"""The cost of a batch folder's state (batch.db) against its number of entries.

    python benchmarks/bench_batch_state.py                  # 1,000 and 10,000 entries
    python benchmarks/bench_batch_state.py --sizes 100000 --changes 500

For each size, in a fresh folder on the temporary disk:
- queue: read a .txt prompt file (and a .yaml one) of that many lines, plan the
  entries and register them in batch.db, as `dream3d batch` does before the first
  entry starts (configs are resolved lazily, per entry, as it comes up);
- re-queue: the same again on the filled folder (a re-run of the command);
- claim / record: one state change each (mark an entry running, record its outcome),
  the median and the 95th percentile over `--changes` entries;
- export: writing batch.json, the readable export, once (at the end of a run);
- rewrite: what every state change cost before batch.db (rewriting and syncing the
  whole of batch.json), for comparison.
Issue 13's bars: 10,000 entries queued in under 5 s, a state change under 10 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream3d.atomic import write_text_atomic  # noqa: E402
from dream3d.batch.job import Outcome  # noqa: E402
from dream3d.batch.promptfile import read_prompt_files  # noqa: E402
from dream3d.batch.runner import BatchOptions, plan  # noqa: E402
from dream3d.batch.store import BatchStore  # noqa: E402


def queue(path: Path, out: Path) -> tuple[float, list]:
    out.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    planned = plan(read_prompt_files([path]), BatchOptions(out=out), resolve=False)
    with BatchStore(out, claims=True) as store:
        store.register(planned)
    return time.perf_counter() - t0, planned


def measure(n: int, changes: int, root: Path) -> dict:
    txt, yml = root / f"p{n}.txt", root / f"p{n}.yaml"
    txt.write_text("".join(f"a red cube number {i}\n" for i in range(n)))
    yml.write_text("defaults: {preset: fast, steps: 300}\nprompts:\n"
                   + "".join(f"  - {{prompt: a blue torus number {i}, seed: {i}}}\n" for i in range(n)))
    row = {"entries": n}
    row["queue txt s"], planned = queue(txt, root / f"out{n}")
    row["queue yaml s"], _ = queue(yml, root / f"yaml{n}")
    row["re-queue s"], _ = queue(txt, root / f"out{n}")
    claim, record = [], []
    with BatchStore(root / f"out{n}", claims=True) as store:
        step = max(1, n // changes)
        for p in planned[::step][:changes]:
            t0 = time.perf_counter()
            assert store.claim(p.id, 0, "0") == "run"
            t1 = time.perf_counter()
            store.record(p.id, Outcome(p.id, ok=True, seconds=12.5, timings={"main": 12.0},
                                       eval={"object_accuracy": 1.0}))
            t2 = time.perf_counter()
            claim.append(1000 * (t1 - t0))
            record.append(1000 * (t2 - t1))
        t0 = time.perf_counter()
        path = store.export()
        row["export s"] = time.perf_counter() - t0
    row["claim ms"] = statistics.median(claim)
    row["record ms"] = statistics.median(record)
    row["p95 ms"] = sorted(claim + record)[int(0.95 * (len(claim) + len(record))) - 1]
    row["batch.json MB"] = path.stat().st_size / 1e6
    text = path.read_text()
    t0 = time.perf_counter()
    write_text_atomic(root / "rewrite.json", json.dumps(json.loads(text), indent=2))
    row["rewrite ms (before)"] = 1000 * (time.perf_counter() - t0)
    return row


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    cell = lambda v: f"{v:,}" if isinstance(v, int) else f"{v:.3g}" if v < 10 else f"{v:.0f}"  # noqa: E731
    widths = [max(len(c), *(len(cell(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(cell(r[c]).rjust(w) for c, w in zip(cols, widths)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--changes", type=int, default=200, help="entries claimed and recorded per size")
    ap.add_argument("--dir", type=Path, default=None, help="where the batch folders go (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"batch folders in {tmp}; {os.cpu_count()} CPUs (times on a shared machine vary)")
        rows = [measure(n, args.changes, Path(tmp)) for n in args.sizes]
    print_table(rows)


if __name__ == "__main__":
    main()
