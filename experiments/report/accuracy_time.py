"""Test accuracy against training time from a runs table (experiments.plots accuracy-time):
one panel per (recipe, model), scratch and torch in two colours, one line per seed."""
import os

from ..cli import headless_pyplot

COLOURS = {"scratch": "tab:blue", "torch": "tab:orange"}


def _epochs_path(row, epochs_dir):
    if epochs_dir:
        return os.path.join(epochs_dir, f"{row['run_id']}.csv")
    return os.path.join(row["run_dir"], "epochs.csv")


def accuracy_vs_time(runs_csv, out_png, epochs_dir=None, title=None):
    import pandas as pd

    plt = headless_pyplot()

    runs = pd.read_csv(runs_csv)
    if "recipe" not in runs:
        runs["recipe"] = ""
    panels = sorted({(str(r.recipe), r.model) for r in runs.itertuples()})
    if not panels:
        raise ValueError(f"{runs_csv} has no runs")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (recipe, model) in zip(axes[0], panels):
        sel = runs[(runs.recipe.astype(str) == recipe) & (runs.model == model)]
        for _, row in sel.iterrows():
            epochs = pd.read_csv(_epochs_path(row, epochs_dir))
            t = epochs.epoch_time_s.cumsum()
            ep = epochs.dropna(subset=["test_acc"])
            t = t.loc[ep.index]
            prec = f" {row['precision']}" if "precision" in row else ""
            ax.plot(t, 100 * ep.test_acc, marker=".", color=COLOURS.get(row["impl"], "gray"),
                    linestyle="-" if int(row["seed"]) % 2 == 0 else "--",
                    label=f"{row['impl']}{prec} seed {int(row['seed'])}")
        ax.set_title(f"{model}" + (f", recipe {recipe}" if recipe else ""))
        ax.set_xlabel("training time (s, evaluation excluded)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    gpu = runs.gpu.dropna().unique() if "gpu" in runs else []
    fig.suptitle(title or ("test accuracy against training time" + (f" on {', '.join(map(str, gpu))}" if len(gpu) else "")))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
