"""Render bench results: terminal table, bench.md (plots: benchplots.py), and multi-run comparison."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from qexport.core.fsutil import atomic_write_bytes, atomic_write_json
from qexport.commands.benchplots import write_plots
from qexport.commands.report import console
from qexport.core.manifest import Precision
from qexport.runtimes.results import BenchDocument, BenchRow, RowStatus
from qexport.runtimes.figures import cannot_tell_from_one
from qexport.runtimes.stats import Interval, min_calls_for_percentile


def environment_lines(doc: BenchDocument) -> list[str]:
    env, opts = doc.environment, doc.options
    data = doc.data
    eval_note = (f"{data.name} test split, {opts.eval_samples or data.test_samples} images"
                 if data else "not measured (no data)")
    return [
        f"CPU: {env.cpu.model} ({', '.join(k for k, v in env.cpu.isa.items() if v)}); "
        f"GPU: {', '.join(env.gpus) or 'none'}; device: {opts.device}",
        f"pinned cores: {opts.pinned_cores}, threads: {opts.threads} (intra-op and inter-op, OMP/MKL set before import)",
        f"{env.library_summary()}; python {env.python}",
        f"{opts.rounds} round(s) per artifact, each a fresh worker process, interleaved across artifacts; "
        f"per round: warm-up {opts.warmup} calls + windows of 10 until the median moves < 5 %, then ≥ "
        f"{opts.min_count} calls and ≥ {opts.min_seconds} s per batch size; timer: perf_counter_ns",
        "p50 = geometric mean of the rounds' medians; CI = its 95 % confidence interval (t on logs over rounds: where "
        "the mean lies); PI = 95 % prediction interval (where one fresh process will land); speed-ups paired round "
        "by round; '~' = not distinguishable from 1×",
        f"accuracy: {eval_note}; agree = top-1 agreement with the {doc.baseline} artifact in its runtime "
        f"(a manifest's agreement is with the eager model); git {env.git_commit or '?'}; {doc.created}; "
        f"command: `{doc.command}`",
    ]


def table_rows(doc: BenchDocument) -> tuple[list[str], list[list[str]]]:
    """What does not depend on the batch size: status, size, accuracy, memory, load time."""
    header = ["family", "precision", "runtime", "status", "MB", "× smaller", "top-1", "agree w/ baseline",
              "peak RSS MB", "load ms [95 % CI]", "first call ms [95 % CI]"]
    body = []
    for row in doc.rows:
        result = row.result if row.measured else None
        ev = result.eval if result else None
        body.append([row.family, row.precision, row.runtime, row.status, f"{row.size_bytes / 1e6:.1f}",
                     fmt(row.size_ratio_vs_fp32, "{:.2f}"), fmt(ev and ev.top1, "{:.2%}"),
                     fmt(ev and ev.agreement_with_baseline_artifact, "{:.2%}"),
                     fmt(result and result.peak_rss_mb, "{:.0f}"),
                     fmt_interval(result and result.load_ms_interval, "{:.0f}", result and result.load_ms),
                     fmt_interval(result and result.first_call_ms_interval, "{:.1f}", result and result.first_inference_ms)])
    return header, body


def batch_rows(doc: BenchDocument, batch: str) -> tuple[list[str], list[list[str]]]:
    """One batch size: latency with where the mean lies (95 % CI) and where one fresh process will
    land (95 % PI), the speed-up against the fastest fp32 artifact and against the baseline, and
    throughput. One table per batch size keeps every interval whole on a narrow terminal."""
    header = ["family", "p50 ms [95 % CI]", "next run ms [95 % PI]", f"× best fp32 ({doc.best_fp32.get(batch, '-')})",
              f"× {doc.baseline}", "img/s", "p99 ms (calls)"]
    body = []
    for row in doc.measured_rows():
        stats = row.batch(batch)
        if stats is None:
            continue
        body.append([row.family, fmt_interval(stats.p50_interval_ms, "{:.3f}", stats.p50_ms),
                     fmt_interval(stats.p50_prediction_ms, "{:.3f}", stats.p50_ms), fmt_best_fp32(row, batch),
                     fmt_speedup(row, batch), fmt(stats.throughput_ips, "{:.0f}"), p99_text(stats)])
    return header, body


def p99_text(stats) -> str:
    """p99 with the number of calls it rests on, or why there is none: fewer calls than MLPerf
    LoadGen's early-stopping rule asks for a 99th percentile (662) cannot place it."""
    needed = min_calls_for_percentile(0.99)
    if stats.count < needed:
        return f"n/a ({stats.count} calls; p99 needs {needed})"
    return f"{stats.p99_ms:.3f} ({stats.count})"


def fmt_best_fp32(row: BenchRow, batch: str) -> str:
    """Speed-up against the fastest fp32 artifact, '~' where the interval cannot tell it from 1×."""
    interval = row.speedup_vs_best_fp32.get(batch)
    text = fmt_interval(interval, "{:.2f}")
    return "~" + text if cannot_tell_from_one(interval) else text


def headline_lines(doc: BenchDocument) -> list[str]:
    """The fastest artifact at each batch size against the best fp32 one first, and against the
    baseline second: a ratio against the slowest fp32 runtime alone flatters int8."""
    lines = []
    for batch in doc.batch_keys:
        best = doc.best_fp32.get(batch)
        timed = [row for row in doc.measured_rows() if row.batch(batch)]
        if not best or not timed:
            continue
        fastest = min(timed, key=lambda row: row.batch(batch).p50_ms)
        honest = fastest.speedup_vs_best_fp32.get(batch)
        predicted = fastest.speedup_vs_best_fp32_prediction.get(batch)
        lines.append(f"batch {batch}: fastest is {fastest.family}, {fmt_interval(honest, '{:.2f}')}× the fastest fp32 "
                     f"artifact ({best}; a re-measurement lands in {fmt_interval(predicted, '{:.2f}')}), "
                     f"{fmt_speedup(fastest, batch)}× {doc.baseline}")
    return lines


SCENARIO_COLUMNS = {"single-stream": ("single-stream p90 ms", "p90_ms"), "multi-stream": ("multi-stream p99 ms", "p99_ms"),
                    "server": ("server peak QPS", "qps"), "offline": ("offline img/s", "qps")}


def scenario_rows(doc: BenchDocument) -> tuple[list[str], list[list[str]]]:
    """One row per artifact: each scenario's headline figure, '(INVALID)' where LoadGen said so,
    LoadGen's own top-1, and the reasons for INVALID runs."""
    names = [name for name in SCENARIO_COLUMNS
             if any(row.measured and row.result.scenario(name) for row in doc.rows)]
    header = ["family", *[SCENARIO_COLUMNS[name][0] for name in names], "LoadGen top-1", "server/offline served by",
              "why INVALID"]
    body = []
    for row in doc.measured_rows():
        if not row.result.scenarios:
            continue
        cells, why = [row.family], []
        for name in names:
            found = row.result.scenario(name)
            value = getattr(found, SCENARIO_COLUMNS[name][1]) if found else None
            cells.append(fmt(value, "{:.2f}" if name in ("single-stream", "multi-stream") else "{:.0f}")
                         + ("" if not found or found.valid else " (INVALID)"))
            if found and not found.valid:
                why.append(f"{name}: {found.reason}")
        accuracy = row.result.loadgen_accuracy
        instancing = row.result.instancing
        cells += [fmt(accuracy and accuracy.top1, "{:.2%}"), instancing.label() if instancing else "-",
                  "; ".join(why) or "-"]
        body.append(cells)
    return header, body


def fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def fmt_interval(interval: Interval | None, pattern: str, fallback: float | None = None) -> str:
    """'0.523 [0.510–0.541]', or the bare estimate where there is no interval (one round)."""
    if not interval:
        return fmt(fallback, pattern)
    text = pattern.format(interval.estimate)
    if interval.low is None or interval.high is None:
        return text
    return f"{text} [{pattern.format(interval.low)}–{pattern.format(interval.high)}]"


def fmt_speedup(row: BenchRow, batch: str) -> str:
    """Speed-up vs fp32 with its paired interval; '~' marks one that cannot be told from 1×."""
    interval = row.speedup_interval.get(batch)
    text = fmt_interval(interval, "{:.2f}", row.speedup_vs_fp32.get(batch))
    return "~" + text if cannot_tell_from_one(interval) else text


def uncertainty_lines(doc: BenchDocument) -> list[str]:
    """Which artifacts the measurement cannot tell apart, and how noisy the host was."""
    lines = [f"cannot be told apart at batch {t.batch}: {t.faster} ~ {t.slower} "
             f"(ratio {fmt_interval(t.ratio, '{:.2f}')}, interval contains 1)" for t in doc.ties]
    noise = doc.noise
    if noise and noise.noisy:
        lines.append("WARNING: " + noise.advice)
    elif noise:
        lines.append(f"round-to-round spread of p50 at batch {noise.batch}: {noise.median_round_spread_pct:.1f} % "
                     "(median over artifacts)")
    return lines


def slower_int8_lines(rows: list[BenchRow], batch: str = "1") -> list[str]:
    """Every int8 artifact measurably slower than TorchScript fp32 at ``batch``, with the causes the
    measurement and the manifest show: a quantized model that loses to fp32 is a finding, never a
    silent row."""
    lines = []
    for row in rows:
        ratio, interval = row.speedup_vs_fp32.get(batch), row.speedup_interval.get(batch)
        if row.precision != Precision.INT8 or ratio is None or ratio >= 1 or cannot_tell_from_one(interval):
            continue
        lines.append(f"{row.file}: int8 is SLOWER than TorchScript fp32 at batch {batch} ({ratio:.2f}x): "
                     + "; ".join(slowness_causes(row, batch)))
    return lines


def slower_than_own_fp32_lines(rows: list[BenchRow]) -> list[str]:
    """Every int8 artifact measurably slower than the fp32 artifact of its *own* runtime (paired
    round by round), with the batch sizes where it is: TorchScript fp32 can be slow enough to
    flatter every int8 row, while a runtime whose int8 loses to its own fp32 is a finding."""
    from qexport.runtimes.stats import paired_ratio

    fp32 = {row.runtime: row for row in rows if row.precision == "fp32" and row.measured}
    lines = []
    for row in rows:
        own = fp32.get(row.runtime)
        if row.precision != Precision.INT8 or not row.measured or own is None:
            continue
        slower = []
        for batch in sorted(set(row.result.batches) & set(own.result.batches), key=int):
            ratio = paired_ratio(own.batch(batch).round_medians(), row.batch(batch).round_medians())
            if ratio.estimate < 1 and ratio.excludes(1.0):
                slower.append(f"batch {batch}: {fmt_interval(ratio, '{:.2f}')}x")
        if slower:
            lines.append(f"{row.file}: int8 is SLOWER than {own.family} in the same runtime ({'; '.join(slower)}): "
                         "its int8 kernels do not pay for the quantize/dequantize around them on this CPU "
                         f"(without VNNI int8 dot products gain little; profile it per op, or deploy {own.family} here)")
    return lines


def slowness_causes(row: BenchRow, batch: str) -> list[str]:
    """Why an int8 row is slow at ``batch``, from what was measured and what the manifest records."""
    causes = []
    largest = max(row.speedup_vs_fp32, key=int, default=batch)
    if (int(largest) > int(batch) and row.speedup_vs_fp32[largest] > 1
            and not cannot_tell_from_one(row.speedup_interval.get(largest))):
        causes.append(f"{row.speedup_vs_fp32[largest]:.2f}x faster at batch {largest}, so the int8 kernels win once "
                      "the fixed per-call cost (quantizing the input, quantize/dequantize between ops, layout "
                      "reorders, per-op dispatch) is spread over a batch: per-op overhead, not arithmetic")
    if row.float_layers:
        causes.append(f"{row.float_layers} layer(s) kept in float for the accuracy budget, each with a "
                      "dequantize -> fp32 -> quantize round trip")
    if row.int8_share is not None and row.int8_share < 0.5:
        causes.append(f"only {row.int8_share:.0%} of the weights are int8 (the rest runs in fp32 plus conversions)")
    return causes or ["no cause recorded in the manifest; profile it at batch 1 (torch.profiler / ORT profiling)"]


def reasons(doc: BenchDocument) -> list[str]:
    lines = []
    for row in doc.rows:
        if row.status is not RowStatus.OK:
            lines.append(f"{row.file}: {row.status} — {row.reason}")
        lines += [f"{row.file}: {note}" for note in row.notes]
    return lines


def print_bench(doc: BenchDocument) -> None:
    for title, (header, body) in report_tables(doc):
        table = Table(title=title)
        for column in header:
            table.add_column(column, overflow="fold",  # wrapped, never cut: the intervals are the point
                             justify="left" if column in ("family", "precision", "runtime", "status") else "right")
        for cells in body:
            table.add_row(*cells)
        console.print(table)
    if any(row.measured and row.result.scenarios for row in doc.rows):
        scenario_header, scenario_body = scenario_rows(doc)
        table = Table(title="MLPerf LoadGen scenarios (logs: " + (doc.options.loadgen_dir or "-") + ")")
        for column in scenario_header:
            table.add_column(column, overflow="fold")
        for cells in scenario_body:
            table.add_row(*cells)
        console.print(table)
    for line in headline_lines(doc) + reasons(doc) + slower_int8_lines(doc.rows) + slower_than_own_fp32_lines(doc.rows) \
            + uncertainty_lines(doc) + environment_lines(doc):
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def report_tables(doc: BenchDocument) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """The artifacts table, then one latency table per batch size."""
    return [("qexport bench: artifacts (size vs the baseline)", table_rows(doc))] + \
        [(f"batch {batch}", batch_rows(doc, batch)) for batch in doc.batch_keys]


def markdown(doc: BenchDocument, recommendation: list[str] | None = None) -> str:
    """bench.md; ``recommendation``: the "which file to ship" lines, shown first."""
    lines = ["# qexport bench", ""]
    if recommendation:
        lines += ["## Which file to ship", "", *recommendation, ""]
    lines += [*[f"- {line}" for line in headline_lines(doc)], "", *[f"- {line}" for line in environment_lines(doc)]]
    for title, (header, body) in report_tables(doc):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    lines += ["", *[f"- {line}" for line in slower_int8_lines(doc.rows) + slower_than_own_fp32_lines(doc.rows)
                    + uncertainty_lines(doc)]]
    if any(row.measured and row.result.scenarios for row in doc.rows):
        scenario_header, scenario_body = scenario_rows(doc)
        settings = doc.options.scenarios
        lines += ["", "## MLPerf LoadGen scenarios", "",
                  f"mlperf_loadgen, each run ≥ {settings.min_duration_s:g} s "
                  f"{'(official MLPerf minimums)' if settings.official else ''}; server: p99 ≤ "
                  f"{settings.target_latency_ms:g} ms, {settings.server_steps} runs of bisection; multi-stream: 8 "
                  f"samples per query; the artifact serves on the pinned cores with LoadGen beside it; "
                  f"LoadGen's logs per artifact and scenario in `{doc.options.loadgen_dir}`.", "",
                  "| " + " | ".join(scenario_header) + " |", "|" + "---|" * len(scenario_header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in scenario_body]
    lines += ["", "Files: " + ", ".join(f"{r.family} = `{r.file}`" for r in doc.rows)]
    lines += harness_overhead_lines(doc)
    notes = reasons(doc)
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def harness_overhead_lines(doc: BenchDocument) -> list[str]:
    """Timed loop (a perf_counter_ns pair per call) vs a bare loop over the same calls."""
    cells = [(row.family, b, stats.harness_overhead_pct)
             for row in doc.measured_rows()
             for b, stats in row.result.batches.items() if stats.harness_overhead_pct is not None]
    if not cells:
        return []
    costs = [(row.result.timer_cost_ns, min(s.p50_ms for s in row.result.batches.values()))
             for row in doc.measured_rows() if row.result.timer_cost_ns]
    worst = max((ns / (p50 * 1e6) * 100 for ns, p50 in costs), default=0.0)
    lines = ["", "## Harness overhead", "",
             f"The timed loop itself costs {max(ns for ns, _ in costs) if costs else 0:.0f} ns per call (a no-op timed "
             f"the same way), at most {worst:.3f} % of any p50 above. Measured against the artifact, interleaved blocks "
             "of bare and timed calls (noise on this machine dominates the difference):", "",
             "| family | batch | timed vs bare % |", "|---|---:|---:|"]
    return lines + [f"| {family} | {b} | {pct:+.2f} |" for family, b, pct in cells]


def write_outputs(doc: BenchDocument, out_dir: Path, manifests: dict | None = None) -> list[Path]:
    """bench.json, bench.md (opening with the recommendation when ``manifests`` are given) and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "bench.json", doc.to_dict())
    atomic_write_bytes(out_dir / "bench.md", markdown(doc, recommendation_for(doc, manifests)).encode())
    return [out_dir / "bench.json", out_dir / "bench.md", *write_plots(doc, out_dir)]


def recommendation_for(doc: BenchDocument, manifests: dict | None) -> list[str] | None:
    """The recommendation's lines under the default rules, or None (no manifests, nothing measured)."""
    from qexport.commands.recommend import RecommendOptions, pareto_lines, recommend, recommendation_lines

    if not manifests or not doc.measured_rows():
        return None
    picks, left_out = recommend(doc, manifests)
    return recommendation_lines(picks, left_out, RecommendOptions()) + ["", *pareto_lines(doc)]
