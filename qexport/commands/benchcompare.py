"""`qexport compare`: bench.json files from several runs against the first, each change in p50
with its 95 % interval and a verdict that calls it significant only when the interval says so."""

from __future__ import annotations

from pathlib import Path

from qexport.core.errors import QExportError
from qexport.runtimes.results import load_bench


def compare(paths: list[Path]) -> tuple[list[str], list[list[str]]]:
    """Every artifact and batch size of each run against the first run: the change in p50 with
    its 95 % interval (Welch t on the logs of the rounds' medians), marked significant only when
    the interval excludes no change."""
    from qexport.runtimes.stats import geometric_interval, welch_ratio

    docs = [(Path(p), load_bench(p)) for p in paths]
    if len(docs) < 2:
        raise QExportError("compare needs at least two bench.json files: the reference run first, then the others.")
    (ref_path, ref), others = docs[0], docs[1:]
    header = ["run", "cpu", "artifact", "batch", "p50 ms before", "p50 ms after", "change", "95 % interval", "verdict"]
    body = []
    for path, doc in others:
        rows = {r.family: r for r in doc.rows}
        for ref_row in ref.rows:
            row = rows.get(ref_row.family)
            for batch in ref.batch_keys:
                before, after = ref_row.batch(batch), row and row.batch(batch)
                if not before or not after:
                    continue
                before, after = before.round_medians(), after.round_medians()
                change = welch_ratio(before, after)
                body.append([path.parent.name + "/" + path.name, doc.environment.cpu.model[:28],
                             ref_row.family, batch, f"{geometric_interval(before).estimate:.3f}",
                             f"{geometric_interval(after).estimate:.3f}",
                             f"{(change.estimate - 1) * 100:+.1f} %", interval_pct(change), verdict(change)])
    if not body:
        raise QExportError(f"{ref_path} and the other runs share no measured artifact and batch size.")
    return header, body


def interval_pct(change) -> str:
    if change.low is None:
        return "- (1 round)"
    return f"[{(change.low - 1) * 100:+.1f} %, {(change.high - 1) * 100:+.1f} %]"


def verdict(change) -> str:
    if change.low is None:
        return "unknown: rerun with --rounds ≥ 2"
    if not change.excludes(1.0):
        return "~ not significant"
    return "significant: " + ("slower" if change.estimate > 1 else "faster")
