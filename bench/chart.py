"""The PNG chart: intake latency percentiles vs concurrency against the storage ceiling's per-op latency."""

from __future__ import annotations

from pathlib import Path


def latency_chart(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    intake = results.get("intake", {}).get("levels", [])
    ceiling = results.get("ceiling", {}).get("basic", [])
    if not intake:
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"p50_ms": "tab:blue", "p95_ms": "tab:orange", "p99_ms": "tab:red"}
    for key, color in colors.items():
        xs = [lv["concurrency"] for lv in intake if lv["latency"][key] is not None]
        ys = [lv["latency"][key] for lv in intake if lv["latency"][key] is not None]
        ax.plot(xs, ys, marker="o", color=color, label=f"intake via devhost {key[:3]}")
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
        cx = [lv["concurrency"] for lv in ceiling if lv["latency"][key] is not None]
        cy = [lv["latency"][key] for lv in ceiling if lv["latency"][key] is not None]
        if cx:
            ax.plot(cx, cy, marker="s", linestyle="--", color=color, alpha=0.55,
                    label=f"storage ceiling (blob+insert+queue) {key[:3]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    levels = sorted({lv["concurrency"] for lv in intake})
    ax.set_xticks(levels)
    ax.set_xticklabels([str(c) for c in levels])
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("latency per report (ms, log)")
    ax.set_title("POST /api/reports latency vs storage ceiling")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")

    width = 0.38
    idx = list(range(len(levels)))
    by_c = {lv["concurrency"]: lv["ops_per_s"] for lv in intake}
    by_cc = {lv["concurrency"]: lv["ops_per_s"] for lv in ceiling}
    ax2.bar([i - width / 2 for i in idx], [by_cc.get(c, 0) for c in levels], width, label="storage ceiling ops/s",
            color="tab:gray")
    ax2.bar([i + width / 2 for i in idx], [by_c.get(c, 0) for c in levels], width, label="intake accepted/s",
            color="tab:blue")
    for i, c in enumerate(levels):
        if by_cc.get(c):
            ax2.annotate(f"{by_c.get(c, 0) / by_cc[c]:.0%}", (i + width / 2, by_c.get(c, 0)),
                         textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
    ax2.set_xticks(idx)
    ax2.set_xticklabels([f"c={c}" for c in levels])
    ax2.set_ylabel("per second")
    ax2.set_title("throughput (label: intake / ceiling)")
    ax2.legend(fontsize=7)
    ax2.grid(True, axis="y", alpha=0.3)
    machine = results.get("machine", {})
    fig.suptitle(f"lab intake bench {results.get('started_at', '')} - {machine.get('nproc')} cores, "
                 f"{machine.get('cpu_model', '')}, Azurite {machine.get('azurite_version', '')}"
                 + (" (quick)" if results.get("quick") else ""), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
