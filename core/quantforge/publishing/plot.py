"""The trade-off plot of a run (size against KL divergence), drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path

from quantforge.store.facts import RunFacts

PLOT_FILE = "quantforge-tradeoffs.png"


def pareto_plot(facts: RunFacts, path: Path, highlight: str | None = None) -> Path | None:
    """Size vs KL (quality loss) of every scored variant, the Pareto front drawn; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = []
    for v in facts.variants:
        target = facts.measuring_target(v.name)
        if target is None:
            continue
        size = facts.value(v.name, target, "size_mb")
        kl = facts.value(v.name, target, "kl_divergence")
        if size is None or kl is None:
            continue
        points.append((v.name, size, max(kl, 1e-7)))
    if not points:
        return None
    front, best = [], float("inf")
    for _, size, kl in sorted(points, key=lambda p: (p[1], p[2])):
        if kl < best:
            front.append((size, kl))
            best = kl
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="#999", lw=1)
    for name, size, kl in points:
        mine = name == highlight
        ax.scatter(size, kl, s=60 if mine else 28, color="#d62728" if mine else "#1f77b4", zorder=3)
        ax.annotate(name, (size, kl), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel("KL divergence vs base (lower is better)")
    ax.set_title(f"{facts.base_name}: size vs quality (measured)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
