"""bench's PNG plots: latency against size and accuracy, the server scenario's latency-throughput
curve, and speed-ups with their intervals as error bars (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from qexport.core.fsutil import atomic_path
from qexport.runtimes.results import BenchDocument, BenchRow
from qexport.commands.recommend import pareto_front
from qexport.runtimes.figures import cannot_tell_from_one
from qexport.runtimes.stats import Interval


def write_plots(doc: BenchDocument, out_dir: Path) -> list[Path]:
    """latency vs size, latency vs accuracy, speed-up bars (batch = the first requested)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (tick formatters below)

    rows = [row for row in doc.measured_rows() if row.batch(doc.batch_keys[0])]
    if not rows:
        return []
    batch = doc.batch_keys[0]
    subtitle = f"batch {batch}, {doc.options.threads} thread(s), {doc.environment.cpu.model}"
    written = []

    colours = {runtime: f"C{i}" for i, runtime in enumerate(sorted({r.runtime for r in rows}))}

    def scatter(name: str, x_of, x_label: str, front: list[BenchRow] = ()) -> None:
        points = sorted((r.batch(batch).p50_ms, x_of(r), r.family, r.runtime, r.batch(batch).p50_interval_ms)
                        for r in rows if x_of(r) is not None)
        if not points:
            return
        fig, ax = plt.subplots(figsize=(8, 5.5))
        for i, (y, x, label, runtime, interval) in enumerate(points):  # alternate label sides: close points stay legible
            ax.scatter(x, y, color=colours[runtime], label=runtime)
            if interval is not None and interval.low is not None and interval.high is not None:  # the 95 % CI
                ax.errorbar(x, y, yerr=[[y - interval.low], [interval.high - y]], fmt="none",
                            ecolor=colours[runtime], alpha=0.6, capsize=2)
            ax.annotate(label, (x, y), fontsize=7, xytext=(5 if i % 2 else -5, 2), textcoords="offset points",
                        ha="left" if i % 2 else "right")
        if len(front) > 1:  # the Pareto front: no other artifact both more accurate and faster
            ax.plot([x_of(r) for r in front], [r.batch(batch).p50_ms for r in front], "k--", lw=0.8,
                    label="Pareto front")
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

    scatter("latency_vs_size", lambda r: r.size_bytes / 1e6, "size on disk (MB)")
    scatter("latency_vs_accuracy", lambda r: r.result.eval.top1 if r.result.eval else None,
            "top-1 accuracy (test split); error bars: p50's 95 % CI",
            [r for r in pareto_front(rows, batch) if r.result.eval])
    speed = sorted((r for r in rows if batch in r.speedup_vs_best_fp32), key=lambda r: r.speedup_vs_best_fp32[batch].estimate)
    if speed:
        written.append(speedup_plot(speed, batch, doc.best_fp32.get(batch, "-"), subtitle, out_dir / "speedup.png"))
    served = [r for r in rows if r.result.scenario("server")]
    if served:
        written.append(server_plot(served, doc, subtitle, out_dir / "server_latency_vs_qps.png"))
    return written


def server_plot(rows: list[BenchRow], doc: BenchDocument, subtitle: str, path: Path) -> Path:
    """Where each artifact's latency takes off: p99 against offered QPS (every LoadGen server run),
    and the peak VALID QPS as bars."""
    import matplotlib.pyplot as plt

    bound = doc.options.scenarios.target_latency_ms
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 5.5))
    for i, row in enumerate(rows):
        points = sorted((p.offered_qps, p.p99_ms, p.valid) for p in row.result.scenario("server").curve
                        if p.p99_ms is not None)
        if points:
            curves.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{i % 10}", label=row.family)
    curves.axhline(bound, color="black", linestyle="--", linewidth=0.8, label=f"p99 bound {bound:g} ms")
    curves.set_xlabel("offered QPS (LoadGen server, Poisson arrivals)")
    curves.set_ylabel("p99 latency (ms, log scale)")
    curves.set_yscale("log")
    curves.legend(fontsize=7)
    curves.grid(True, alpha=0.3)
    peaks = sorted(((r.family, r.result.scenario("server")) for r in rows), key=lambda p: p[1].qps or 0)
    bars.barh([name for name, _ in peaks], [s.qps or 0 for _, s in peaks],
              color=["tab:green" if s.valid else "tab:gray" for _, s in peaks])
    bars.set_xlabel(f"peak VALID server QPS (p99 ≤ {bound:g} ms; grey: none VALID)")
    bars.tick_params(axis="y", labelsize=7)
    fig.suptitle(f"MLPerf LoadGen server scenario\n{subtitle}", fontsize=10)
    return save(fig, path)


def speedup_colour(row: BenchRow, batch: str) -> str:
    """Green faster, red slower than the baseline -- grey where the interval cannot tell it from 1×."""
    return interval_colour(row.speedup_interval.get(batch), row.speedup_vs_fp32[batch])


def interval_colour(interval: Interval | None, ratio: float) -> str:
    if cannot_tell_from_one(interval):
        return "tab:gray"
    return "tab:green" if ratio >= 1 else "tab:red"


def speedup_plot(rows: list[BenchRow], batch: str, best: str, subtitle: str, path: Path) -> Path:
    """Speed-up bars against the fastest fp32 artifact (``best``) with their 95 % intervals as
    error bars (paired round by round): the honest headline, not the ratio to the slowest fp32."""
    import matplotlib.pyplot as plt

    intervals = [r.speedup_vs_best_fp32[batch] for r in rows]
    values = [i.estimate for i in intervals]
    below = [v - i.low if i.low is not None else 0.0 for v, i in zip(values, intervals)]
    above = [i.high - v if i.high is not None else 0.0 for v, i in zip(values, intervals)]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ax.barh([r.family for r in rows], values, xerr=[below, above], capsize=3, ecolor="black",
            color=[interval_colour(i, i.estimate) for i in intervals])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"speed-up vs the fastest fp32 artifact, {best} (p50; whiskers: 95 % interval, grey: not "
                  "distinguishable from 1×)", fontsize=8)
    ax.set_title(f"speed-up\n{subtitle}", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    return save(fig, path)


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
