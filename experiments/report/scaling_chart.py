"""The thread-scaling chart: images/s (with linear scaling dotted) and parallel efficiency
against threads, one line per implementation, from experiments.scaling's rows."""
from ..cli import headless_pyplot


def plot(rows, path, title):
    import matplotlib.ticker

    plt = headless_pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for impl in sorted({r["impl"] for r in rows}):
        rs = [r for r in rows if r["impl"] == impl]
        t = [r["threads"] for r in rs]
        ips = [r["images_per_s"] for r in rs]
        err = [[r["images_per_s"] - r["images_per_s_min"] for r in rs],
               [r["images_per_s_max"] - r["images_per_s"] for r in rs]]
        line = a1.errorbar(t, ips, yerr=err, marker="o", capsize=3, label=impl)
        ideal = [ips[0] * x / t[0] for x in t]
        a1.plot(t, ideal, ls=":", color=line[0].get_color(), alpha=0.6)
        a2.plot(t, [r["efficiency"] for r in rs], marker="o", label=impl)
    for ax in (a1, a2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["threads"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("threads")
        ax.grid(alpha=0.3)
        ax.legend()
    a1.set_ylabel("training images/s (dotted: linear scaling)")
    a2.set_ylabel("parallel efficiency")
    a2.set_ylim(0, 1.15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
