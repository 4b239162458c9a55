"""Render bench results: terminal table, bench.md, PNG plots, and multi-run comparison."""

from __future__ import annotations

import json
from pathlib import Path

from rich.table import Table

from qexport.envinfo import ipex_summary
from qexport.errors import QExportError
from qexport.fsutil import atomic_path, atomic_write_bytes, atomic_write_json
from qexport.report import console


def batch_keys(doc: dict) -> list[str]:
    return [str(b) for b in doc["options"]["batch_sizes"]]


def environment_lines(doc: dict) -> list[str]:
    env, opts = doc["environment"], doc["options"]
    libs = env["libraries"]
    data = doc.get("data") or {}
    eval_note = (f"{data.get('name')} test split, {opts['eval_samples'] or data.get('test_samples')} images"
                 if data else "not measured (no data)")
    return [
        f"CPU: {env['cpu']['model']} ({', '.join(k for k, v in env['cpu']['isa'].items() if v)}); "
        f"GPU: {', '.join(env['gpus']) or 'none'}; device: {opts['device']}",
        f"pinned cores: {opts['pinned_cores']}, threads: {opts['threads']} (intra-op and inter-op, OMP/MKL set before import)",
        f"torch {libs['torch']}, torchvision {libs['torchvision']}, torchao {libs['torchao']}, "
        f"onnxruntime {libs['onnxruntime']}, IPEX {ipex_summary(env)}; "
        f"python {env['python']}",
        f"warm-up: {opts['warmup']} calls + windows of 10 until the median moves < 5 %; "
        f"measured: ≥ {opts['min_count']} calls and ≥ {opts['min_seconds']} s per batch size; timer: perf_counter_ns",
        f"accuracy: {eval_note}; git {env.get('git_commit') or '?'}; {doc['created']}; command: `{doc['command']}`",
    ]


def table_rows(doc: dict) -> tuple[list[str], list[list[str]]]:
    batches = batch_keys(doc)
    header = ["family", "precision", "runtime", "status", "MB", "× smaller"]
    for b in batches:
        header += [f"p50 ms @{b}", f"× fp32 @{b}", f"img/s @{b}"]
    header += ["top-1", "agree", "peak RSS MB", "load ms"]
    body = []
    for row in doc["rows"]:
        cells = [row["family"], row["precision"], row["runtime"], row["status"], f"{row['size_bytes'] / 1e6:.1f}",
                 fmt(row.get("size_ratio_vs_fp32"), "{:.2f}")]
        result = row.get("result") or {}
        for b in batches:
            stats = result.get("batches", {}).get(b)
            cells += [fmt(stats and stats["p50_ms"], "{:.3f}"), fmt((row.get("speedup_vs_fp32") or {}).get(b), "{:.2f}"),
                      fmt(stats and stats["throughput_ips"], "{:.0f}")]
        ev = result.get("eval", {})
        cells += [fmt(ev.get("top1"), "{:.2%}"), fmt(ev.get("agreement_with_fp32"), "{:.2%}"),
                  fmt(result.get("peak_rss_mb"), "{:.0f}"), fmt(result.get("load_ms"), "{:.0f}")]
        body.append(cells)
    return header, body


def fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def reasons(doc: dict) -> list[str]:
    lines = []
    for row in doc["rows"]:
        if row["status"] != "ok":
            lines.append(f"{row['file']}: {row['status']} — {row['reason']}")
        for note in row.get("notes", []):
            lines.append(f"{row['file']}: {note}")
    return lines


def print_bench(doc: dict) -> None:
    header, body = table_rows(doc)
    table = Table(title="qexport bench (speed-up and size vs TorchScript fp32)")
    for column in header:
        table.add_column(column, justify="left" if column in ("family", "precision", "runtime", "status") else "right",
                         no_wrap=column == "family")
    for cells in body:
        table.add_row(*cells)
    console.print(table)
    for line in reasons(doc) + environment_lines(doc):
        console.print(line, highlight=False, soft_wrap=True)


def markdown(doc: dict) -> str:
    header, body = table_rows(doc)
    lines = ["# qexport bench", "", *[f"- {line}" for line in environment_lines(doc)], "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", "Files: " + ", ".join(f"{r['family']} = `{r['file']}`" for r in doc["rows"])]
    lines += harness_overhead_lines(doc)
    notes = reasons(doc)
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def harness_overhead_lines(doc: dict) -> list[str]:
    """Timed loop (a perf_counter_ns pair per call) vs a bare loop over the same calls."""
    cells = [(row["family"], b, stats["harness_overhead_pct"])
             for row in doc["rows"] if row["status"] == "ok"
             for b, stats in row["result"]["batches"].items() if stats.get("harness_overhead_pct") is not None]
    if not cells:
        return []
    costs = [(row["result"].get("timer_cost_ns"), min(s["p50_ms"] for s in row["result"]["batches"].values()))
             for row in doc["rows"] if row["status"] == "ok" and row["result"].get("timer_cost_ns")]
    worst = max((ns / (p50 * 1e6) * 100 for ns, p50 in costs), default=0.0)
    lines = ["", "## Harness overhead", "",
             f"The timed loop itself costs {max(ns for ns, _ in costs) if costs else 0:.0f} ns per call (a no-op timed "
             f"the same way), at most {worst:.3f} % of any p50 above. Measured against the artifact, interleaved blocks "
             "of bare and timed calls (noise on this machine dominates the difference):", "",
             "| family | batch | timed vs bare % |", "|---|---:|---:|"]
    return lines + [f"| {family} | {b} | {pct:+.2f} |" for family, b, pct in cells]


def write_outputs(doc: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "bench.json", doc)
    atomic_write_bytes(out_dir / "bench.md", markdown(doc).encode())
    return [out_dir / "bench.json", out_dir / "bench.md", *write_plots(doc, out_dir)]


def ok_rows(doc: dict) -> list[dict]:
    return [r for r in doc["rows"] if r["status"] == "ok" and r.get("result")]


def write_plots(doc: dict, out_dir: Path) -> list[Path]:
    """latency vs size, latency vs accuracy, speed-up bars (batch = the first requested)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (tick formatters below)

    rows = ok_rows(doc)
    if not rows:
        return []
    batch = batch_keys(doc)[0]
    subtitle = f"batch {batch}, {doc['options']['threads']} thread(s), {doc['environment']['cpu']['model']}"
    written = []

    colours = {runtime: f"C{i}" for i, runtime in enumerate(sorted({r["runtime"] for r in rows}))}

    def scatter(name: str, x_of, x_label: str) -> None:
        points = sorted((r["result"]["batches"][batch]["p50_ms"], x_of(r), r["family"], r["runtime"])
                        for r in rows if x_of(r) is not None)
        if not points:
            return
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for i, (y, x, label, runtime) in enumerate(points):  # alternate label sides: close points stay legible
            ax.scatter(x, y, color=colours[runtime], label=runtime)
            ax.annotate(label, (x, y), fontsize=7, xytext=(5 if i % 2 else -5, 2), textcoords="offset points",
                        ha="left" if i % 2 else "right")
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), title="runtime", fontsize=8)
        ax.set_xlabel(x_label)
        ax.set_ylabel("p50 latency (ms, log scale)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.tick_params(axis="y", which="minor", labelsize=7)
        ax.set_title(f"{name.replace('_', ' ')}\n{subtitle}", fontsize=10)
        ax.grid(True, alpha=0.3)
        written.append(save(fig, out_dir / f"{name}.png"))

    scatter("latency_vs_size", lambda r: r["size_bytes"] / 1e6, "size on disk (MB)")
    scatter("latency_vs_accuracy", lambda r: (r["result"].get("eval") or {}).get("top1"), "top-1 accuracy (test split)")
    speed = [(r["family"], (r.get("speedup_vs_fp32") or {}).get(batch)) for r in rows]
    speed = [(f, s) for f, s in speed if s is not None]
    if speed:
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(speed) + 1.5))
        names, values = zip(*sorted(speed, key=lambda p: p[1]))
        ax.barh(names, values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("speed-up vs TorchScript fp32 (p50)")
        ax.set_title(f"speed-up\n{subtitle}", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        written.append(save(fig, out_dir / "speedup.png"))
    return written


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def load_bench(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise QExportError(f"Cannot read bench results {path} ({err}); pass bench.json files written by `qexport bench`.") from err
    if not isinstance(doc, dict) or doc.get("schema") != "qexport.bench" or doc.get("schema_version") != 1:
        raise QExportError(f"{path} is not a qexport bench.json (schema version 1).")
    return doc


def compare(paths: list[Path]) -> tuple[list[str], list[list[str]]]:
    """One table over runs from different machines or settings, one line per (run, artifact)."""
    docs = [(Path(p), load_bench(p)) for p in paths]
    batches = sorted({b for _, d in docs for b in batch_keys(d)}, key=int)
    header = ["run", "cpu", "threads", "artifact", "status"] + [f"p50 ms @{b}" for b in batches] + \
             [f"× fp32 @{b}" for b in batches] + ["top-1"]
    body = []
    for path, doc in docs:
        for row in doc["rows"]:
            result = row.get("result") or {}
            cells = [path.parent.name + "/" + path.name, doc["environment"]["cpu"]["model"][:28],
                     str(doc["options"]["threads"]), row["file"], row["status"]]
            cells += [fmt((result.get("batches", {}).get(b) or {}).get("p50_ms"), "{:.3f}") for b in batches]
            cells += [fmt((row.get("speedup_vs_fp32") or {}).get(b), "{:.2f}") for b in batches]
            cells.append(fmt((result.get("eval") or {}).get("top1"), "{:.2%}"))
            body.append(cells)
    return header, body
