"""The benchmarks' pictures (matplotlib, Agg, PNG files next to results.md): each
operation against its baseline with the spread of its samples, the per-phase breakdown of
single commands as stacked bars, and throughput against parallelism.

Owns the PNG files it writes; ``pip install -e '.[bench]'`` brings matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import KINDS

SEGMENTS = (*KINDS, "other", "exit")
COLOURS = {"start-up": "#8c564b", "configuration": "#e377c2", "keystone": "#d62728",
           "negotiation": "#ff7f0e", "connection": "#bcbd22", "storage": "#1f77b4",
           "libvirt": "#2ca02c", "host-call": "#9467bd", "other": "#7f7f7f",
           "exit": "#c7c7c7"}


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("benchmarks: the plots need matplotlib: pip install -e "
                         "'.[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def versus(panels: list[tuple[str, list[tuple[str, list[float]]]]], path: Path) -> Path:
    """One panel per figure: a box per series (its samples as dots over it), in seconds.
    ``panels``: (title, [(label, samples), ...]); the first series is the baseline."""
    plt = pyplot()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        labels = [label for label, _ in series]
        data = [samples for _, samples in series]
        ax.boxplot(data, whis=(0, 100), widths=0.5)
        for i, samples in enumerate(data, start=1):
            ax.scatter([i] * len(samples), samples, s=10, color="#1f77b4", zorder=3)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("seconds")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Each operation against its baseline (box: min-max and quartiles; dots: "
                 "runs)", fontsize=11)
    return _save(fig, plt, path)


def breakdown(bars: list[tuple[str, dict]], path: Path, title: str) -> Path:
    """Stacked horizontal bars, one per command, a segment per phase (median seconds)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 0.6 * len(bars) + 1.6))
    labels = [label for label, _ in bars]
    left = [0.0] * len(bars)
    for seg in SEGMENTS:
        widths = [max(0.0, report.get(seg, 0.0)) for _, report in bars]
        if not any(widths):
            continue
        ax.barh(labels, widths, left=left, color=COLOURS[seg], label=seg)
        left = [a + b for a, b in zip(left, widths)]
    ax.invert_yaxis()
    ax.set_xlabel("seconds (median per phase; 'other': attachflow's own work and waits; "
                  "'exit': after its report)", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plt, path)


def throughput(widths: list[int], series: dict[str, tuple[list[float], list[float]]],
               path: Path) -> Path:
    """Attaches per second and p95 latency against parallelism; ``series``: name ->
    (throughputs, p95 latencies), one per width."""
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, (rates, p95s) in series.items():
        ax1.plot(widths, rates, marker="o", label=name)
        ax2.plot(widths, p95s, marker="o", label=name)
    ax1.set_ylabel("attaches per second")
    ax2.set_ylabel("p95 latency of one attach (s)")
    for ax in (ax1, ax2):
        ax.set_xlabel("attaches at once")
        ax.set_xticks(widths)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Parallel attaches: attachflow's CLI against the floor at the same "
                 "parallelism", fontsize=11)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
