"""Batch-1 speed against the fastest fp32 artifact, per family, from two compatibility.md tables
(the 32 px and the 224 px matrix), side by side for the architectures both hold. It copies the
ratios as the matrices print them; it computes nothing.

    python docs/results/compare_matrices.py docs/compatibility.md /work/zoo-224/compatibility.md
"""

from __future__ import annotations

import re
import sys


def table(path: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The matrix's header and its rows by architecture."""
    lines = [line for line in open(path, encoding="utf-8") if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        row = dict(zip(head, (c.strip() for c in line.strip().strip("|").split("|"))))
        rows[row["architecture"]] = row
    return head, rows


def ratio(cell: str | None) -> str:
    """'~0.89' from '✓ ~0.89× drop …'; 'fail' for a failed cell; '-' for anything else."""
    found = re.search(r"(~?)(\d+\.\d+)×", cell or "")
    return found.group(1) + found.group(2) if found else ("fail" if "fail" in (cell or "") else "-")


def side_by_side(small_path: str, large_path: str) -> str:
    _, small = table(small_path)
    head, large = table(large_path)
    archs = [a for a in large if a in small]
    out = ["| family | " + " | ".join(f"{a.split(':')[-1]} {small[a]['px']} px | {large[a]['px']} px" for a in archs) + " |",
           "|---|" + "---:|---:|" * len(archs)]
    for family in head[3:]:
        pairs = [(ratio(small[a].get(family)), ratio(large[a].get(family))) for a in archs]
        if any(pair != ("-", "-") for pair in pairs):
            out.append(f"| {family} | " + " | ".join(f"{x} | {y}" for x, y in pairs) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    print(side_by_side(sys.argv[1], sys.argv[2]))
