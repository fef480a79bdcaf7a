"""Cost per unit of robustness: MACER's Table 3 question — what does each point of robustness cost to train — asked of
every method of a dataset at once.

One row per run (its last epoch): its robustness by its own kind of evaluation — ℓ2 smoothing: ACR and the certified
accuracy at the report's radii under CERTIFY; ℓ∞-dist nets: the certified accuracy at their test ε by interval bounds;
empirical ℓ∞ methods: the accuracy under their standalone attack at their ε (an upper bound) — against the training
hours measured here (and the paper's own where the run names a published setting with a timing, on the paper's
hardware). `hours_per_unit` = hours / robustness (per unit of ACR, or per unit of accuracy at ε): smaller is cheaper.
The figure puts robustness against hours, one panel per kind, one colour per method.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.tsv import read_tsv
from .compare import published_refs
from .figures import method_color, save_figure
from .labels import checkpoints, ours, run_labels
from .published import select
from .tables import robust_accuracy

KINDS = {"l2": "ACR (l2, CERTIFY)", "linf-certified": "certified accuracy at eps", "linf-empirical": "accuracy under "
         "the attack at eps (upper bound)"}  # fmt: skip


def _certified_at_eps(certify_file) -> float:
    meta = json.loads(Path(certify_file).with_suffix(".json").read_text())
    eps = float(meta.get("model_info", {}).get("hparams", {}).get("eps_test") or 0.0)
    frame = read_tsv(certify_file)
    return float(((frame["correct"] == 1) & (frame["radius"] >= eps - 1e-9)).mean())


def _paper_hours(summary: pd.DataFrame, published: pd.DataFrame | None, run: str) -> float:
    if published is None or "published" not in summary:
        return float("nan")
    for ref in published_refs(summary.loc[summary["run"] == run, "published"].iloc[0]):
        rows = select(published, ref["paper"], ref["dataset"], ref["setting"])
        hours = rows[rows["metric"] == "total_hours"]["value"]
        if len(hours) and ref["dataset"] == summary["dataset"].iloc[0]:
            return float(hours.iloc[0])
    return float("nan")


def cost_robustness_table(summary: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """See the module docstring; mean over seeds."""
    summary = ours(summary)
    last = summary[checkpoints(summary) == "last"].assign(model=run_labels(summary[checkpoints(summary) == "last"]))
    last = last.assign(robust=robust_accuracy(last))
    rows = []
    for run, group in last.groupby("run", sort=False):
        cohen = group[group["certifier"] == "cohen"]
        interval = group[group["certifier"] == "linf-interval"]
        attacked = group[group["robust"].notna()]
        if len(cohen):
            kind, chosen, value = "l2", cohen, float(cohen["acr"].mean())
        elif len(interval):
            kind, chosen = "linf-certified", interval
            value = float(np.mean([_certified_at_eps(f) for f in interval["certify_file"]]))
        elif len(attacked):
            chosen = attacked[attacked["certifier"] == attacked["certifier"].iloc[0]]
            kind, value = "linf-empirical", float(chosen["robust"].mean())
        else:
            continue
        hours = float(chosen["train_hours"].mean())
        rows.append({"model": chosen["model"].iloc[0], "method": chosen["method"].iloc[0],
                     "certifier": chosen["certifier"].iloc[0], "kind": kind, "robustness": value,
                     "clean_acc": float(chosen["clean_acc"].mean()), "train_hours": hours,
                     "hours_per_unit": hours / value if value > 0 else float("nan"),
                     "paper_total_hours": _paper_hours(summary, published, run),
                     "device": chosen["device"].iloc[0], "seeds": int(chosen["seed"].nunique())})  # fmt: skip
    return pd.DataFrame(rows, columns=["model", "method", "certifier", "kind", "robustness", "clean_acc", "train_hours",
                                       "hours_per_unit", "paper_total_hours", "device", "seeds"])  # fmt: skip


def plot_cost_robustness(table: pd.DataFrame, out_stem: str | Path, title: str = "") -> list[Path]:
    """Robustness against measured training hours (log scale), one panel per kind of robustness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.2)
    kinds = [k for k in KINDS if (table["kind"] == k).any()] or ["l2"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        part = table[table["kind"] == kind]
        for row in part.itertuples(index=False):
            color = method_color(row.method)
            face = "none" if kind == "linf-empirical" else color  # hollow: an attack's upper bound
            ax.plot(row.train_hours * 3600, row.robustness, marker="o", linestyle="none", markersize=8, color=color,
                    markerfacecolor=face)  # fmt: skip
            ax.annotate(row.model.split(" [")[0], (row.train_hours * 3600, row.robustness), fontsize="x-small",
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        ax.set(xscale="log", xlabel="training time (seconds, measured)", ylabel=KINDS[kind])
        ax.set_ylim(bottom=0)
    fig.suptitle(textwrap.fill(title or "Robustness against training cost", 80), fontsize="medium")
    return save_figure(fig, out_stem)
