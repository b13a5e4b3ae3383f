#!/usr/bin/env python3
"""Plots for a ringtgt perf report: IOPS by queue depth, latency distributions, target CPU per I/O.

Usage: plot.py REPORT.json OUTDIR  (prints the PNG file names it wrote, one per line)
Needs matplotlib (Debian: python3-matplotlib)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    ("ringtgt", 1): dict(color="#1f77b4", marker="o", linestyle="-", label="ringtgt, 1 core"),
    ("ringtgt", 2): dict(color="#6baed6", marker="o", linestyle="--", label="ringtgt, 2 cores"),
    ("tgt", 1): dict(color="#d62728", marker="s", linestyle="-", label="tgt, 1 core"),
    ("tgt", 2): dict(color="#fc9272", marker="s", linestyle="--", label="tgt, 2 cores"),
}
DEPTHS = [1, 32, 128]


def runs_by(report):
    out = {}
    for r in report.get("runs", []):
        out[(r["scenario"], r["peer"], r["cores"])] = r
    return out


def iops_by_qd(report, outdir):
    runs = runs_by(report)
    loop = {e["queueDepth"]: e.get("roundTripsPerSecond") for e in report.get("loopback", [])}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), sharex=True)
    for row, rw in enumerate(["randread", "randwrite"]):
        for col, lun in enumerate(["null", "file"]):
            ax = axes[row][col]
            for (peer, cores), st in STYLE.items():
                xs, ys = [], []
                for qd in DEPTHS:
                    r = runs.get((f"{lun}-{rw}-4k-qd{qd}", peer, cores))
                    if r and r.get("ok"):
                        xs.append(qd)
                        ys.append(r["iops"] / 1000)
                if xs:
                    ax.plot(xs, ys, **st)
                crashed = [qd for qd in DEPTHS if (runs.get((f"{lun}-{rw}-4k-qd{qd}", peer, cores)) or {}).get("crashed")]
                for qd in crashed:
                    ax.annotate("crashed", (qd, 0), color=st["color"], fontsize=8)
            if rw == "randread" and lun == "null" and any(loop.get(q) for q in DEPTHS):
                qs = [q for q in DEPTHS if loop.get(q)]
                ax.plot(qs, [loop[q] / 1000 for q in qs], color="gray", linestyle=":", marker="x",
                        label="loopback limit (echo)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(DEPTHS)
            ax.set_xticklabels([str(q) for q in DEPTHS])
            ax.set_ylim(bottom=0)
            ax.set_title(f"4 KiB {'random read' if rw == 'randread' else 'random write'}, {lun} LUN")
            ax.set_ylabel("K IOPS")
            ax.grid(True, alpha=0.3)
            if row == 1:
                ax.set_xlabel("queue depth (one session)")
            ax.legend(fontsize=8)
    fig.suptitle("IOPS by queue depth: ringtgt vs tgt (same run)")
    return save(fig, outdir, "iops_by_qd.png")


def save(fig, outdir, name):
    """Lays the figure out, writes OUTDIR/NAME and returns NAME."""
    fig.tight_layout()
    fig.savefig(f"{outdir}/{name}", dpi=110)
    plt.close(fig)
    return name


def latency(report, outdir):
    runs = runs_by(report)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5))
    panels = [("null-randread-4k-qd1", "null LUN, 4K rand read, QD1"),
              ("null-randread-4k-qd32", "null LUN, 4K rand read, QD32"),
              ("file-randwrite-4k-qd32", "file LUN, 4K rand write, QD32")]
    for ax, (scenario, title) in zip(axes, panels):
        for (peer, cores), st in STYLE.items():
            r = runs.get((scenario, peer, cores))
            if not r or not r.get("latencyDistribution"):
                continue
            pts = [(v, p) for v, p in r["latencyDistribution"] if p < 100]
            if not pts:
                continue
            xs = [1 / (1 - p / 100) for _, p in pts]
            ys = [v for v, _ in pts]
            ax.plot(xs, ys, color=st["color"], linestyle=st["linestyle"], label=st["label"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ticks = [2, 10, 100, 1000, 10000]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (µs)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency distribution (HdrHistogram from ringtgt-loadgen)")
    return save(fig, outdir, "latency.png")


def cpu_per_io(report, outdir):
    runs = runs_by(report)
    scenarios = []
    for r in report.get("runs", []):
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    labels, rt, tg = [], [], []
    for s in scenarios:
        a = runs.get((s, "ringtgt", 1))
        b = runs.get((s, "tgt", 1))
        if not a or not b:
            continue
        labels.append(s)
        rt.append(a.get("cpuMicrosPerIO") if a.get("ok") else 0)
        tg.append(b.get("cpuMicrosPerIO") if b.get("ok") else 0)
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(labels) + 1.5))
    y = range(len(labels))
    ax.barh([i + 0.2 for i in y], [v or 0 for v in rt], height=0.4, color="#1f77b4", label="ringtgt, 1 core")
    ax.barh([i - 0.2 for i in y], [v or 0 for v in tg], height=0.4, color="#d62728", label="tgt, 1 core")
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("target CPU time per I/O (µs, log scale; 0 = crashed or failed)")
    ax.grid(True, axis="x", which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Target CPU per I/O, 1 target core (lower is better)")
    return save(fig, outdir, "cpu_per_io.png")


def main():
    report = json.load(open(sys.argv[1]))
    outdir = sys.argv[2]
    for fn in (iops_by_qd, latency, cpu_per_io):
        name = fn(report, outdir)
        if name:
            print(name)


if __name__ == "__main__":
    main()
