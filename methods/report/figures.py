"""The papers' figures, regenerated from summary.csv and the per-example TSVs alone, with published points overlaid.

- per σ: certified accuracy vs ℓ2 radius of every method at that σ (as Cohen's and MACER's figures), CERTIFY only;
  a method with several runs at one σ (SmoothAdv's grid) is drawn as its upper envelope over those runs;
- per method with a σ sweep: one thin line per σ and the envelope over σ in black (Cohen's "envelope" figure);
- published numbers of the runs' `published` settings (same dataset only: a CIFAR-10 number on a digits axis would
  mislead) as hollow markers in the method's colour.
One colour per method in every figure (MACER red, Cohen blue, SmoothAdv magenta as MACER's figures); runs of a
method are shades of it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.tsv import read_tsv
from .compare import published_refs
from .labels import is_published, ours, run_labels
from .published import select

#: One hue per method, the same in every figure.
METHOD_COLORS = {
    "macer": "#d62728",
    "cohen": "#1f77b4",
    "salman": "#c51b7d",
    "feng": "#2ca02c",
    "linf_dist": "#ff7f0e",
    "backward_smoothing": "#6a3d9a",
}
#: One line style per method in ℓ2 figures, as MACER's (MACER solid, Cohen dashed, Salman dotted).
LINESTYLES = {"macer": "-", "cohen": "--", "salman": ":", "feng": "-."}


def method_color(method: str) -> str:
    return METHOD_COLORS.get(method, "#7f7f7f")


def shades(color: str, n: int) -> list[tuple]:
    """n colours of `color`'s hue and saturation, lightness from dark (0.25) to light (0.7); n = 1: the colour."""
    import colorsys

    import matplotlib.colors as mcolors

    if n == 1:
        return [mcolors.to_rgb(color)]
    hue, _, saturation = colorsys.rgb_to_hls(*mcolors.to_rgb(color))
    return [colorsys.hls_to_rgb(hue, 0.25 + 0.45 * i / (n - 1), saturation) for i in range(n)]


def run_colors(models: list[str], methods: list[str]) -> dict[str, tuple]:
    """Each model a shade of its method's hue, so methods read apart and runs within one too."""
    out = {}
    for method in dict.fromkeys(methods):
        mine = list(dict.fromkeys(m for m, me in zip(models, methods) if me == method))
        out.update(zip(mine, shades(method_color(method), len(mine))))
    return out


def sigma_tag(sigma: float) -> str:
    """figures/<dataset>/certified_accuracy_sigma<tag>: 0.12, 0.25, 0.5, 1."""
    return f"{float(sigma):g}"


def l2_figure_stems(sigmas, sweep_methods) -> list[str]:
    """The paper-style ℓ2 figures a dataset gets (file stems under figures/<dataset>/), also used by the DAG."""
    return [f"certified_accuracy_sigma{sigma_tag(s)}" for s in sorted(set(sigmas))] + [
        f"sigma_sweep_{m}" for m in sorted(set(sweep_methods))
    ]


def _cohen_rows(summary: pd.DataFrame, origin: str = "ours") -> pd.DataFrame:
    """CERTIFY rows with a σ: our runs (default) or the papers' imported per-example files (origin "published")."""
    norm = summary.get("norm", pd.Series("l2", index=summary.index))
    rows = summary[(norm == "l2") & (summary["certifier"] == "cohen") & summary["sigma"].notna()]
    return rows[is_published(rows)] if origin == "published" else ours(rows)


def sigmas_and_sweeps(summary: pd.DataFrame) -> tuple[list[float], list[str]]:
    """σ values with a CERTIFY curve, and the methods certified at two σ or more."""
    rows = _cohen_rows(summary)
    sweeps = [m for m, g in rows.groupby("method") if g["sigma"].nunique() > 1]
    return sorted(set(rows["sigma"])), sorted(sweeps)


def _envelope(curves: pd.DataFrame) -> pd.DataFrame:
    """Max over the curves' runs at each radius (each run already averaged over seeds)."""
    return curves.groupby("radius", as_index=False)["certified_accuracy"].max()


def _published_points(summary: pd.DataFrame, published: pd.DataFrame | None, metric_norm: str = "l2"):
    """(run, setting label, paper, metric, radius, value) of the published rows the summary's runs point at, same
    dataset only."""
    if published is None or "published" not in summary:
        return pd.DataFrame(columns=["run", "label", "metric", "radius", "value", "sigma"])
    rows = []
    for run, cell, dataset in summary[["run", "published", "dataset"]].drop_duplicates("run").itertuples(index=False):
        for ref in published_refs(cell):
            if ref["dataset"] != dataset:
                continue
            for p in select(published, ref["paper"], ref["dataset"], ref["setting"]).itertuples(index=False):
                wanted = (
                    p.metric == "certified_accuracy"
                    if metric_norm == "l2"
                    else p.metric in ("certified_accuracy", "pgd_accuracy", "autoattack_accuracy", "clean_accuracy")
                )
                if wanted and (metric_norm == "l2") == pd.notna(p.sigma):
                    rows.append(
                        {
                            "run": run,
                            "label": f"{p.setting} ({p.paper})",
                            "metric": p.metric,
                            "radius": 0.0 if pd.isna(p.radius) else p.radius,
                            "value": p.value,
                            "sigma": p.sigma,
                        }
                    )
    return pd.DataFrame(rows, columns=["run", "label", "metric", "radius", "value", "sigma"])


def save_figure(fig, out_stem: str | Path) -> list[Path]:
    """<out_stem>.png (200 dpi) and .pdf, laid out tight; a stem with dots (sigma0.25) keeps them."""
    import matplotlib.pyplot as plt

    out_stem = Path(out_stem)

    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + ".png"), out_stem.with_name(out_stem.name + ".pdf")]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _axes(title: str, radius_max: float, xlabel: str = r"radius ($\ell_2$)"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(context="paper", style="whitegrid", font_scale=1.3)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.set(xlim=(0, radius_max), ylim=(0, 1), xlabel=xlabel, ylabel="certified accuracy")
    ax.set_title(textwrap.fill(title, 60), fontsize="medium")
    return fig, ax


def plot_per_sigma(
    summary: pd.DataFrame,
    published: pd.DataFrame | None,
    figures_dir: str | Path,
    radius_max: float,
    title: str = "",
    sigmas=None,
) -> list[Path]:
    """certified_accuracy_sigma<σ>.{png,pdf} for each σ of `sigmas` (default: every σ with a CERTIFY curve): every
    method at that σ (envelope over its runs when it has several), published points of the same dataset as hollow
    markers."""
    rows = _cohen_rows(summary)
    paths = []
    dataset = summary["dataset"].iloc[0] if len(summary) else ""
    points = _published_points(rows, published)
    for sigma in sorted(set(rows["sigma"])) if sigmas is None else sigmas:
        if not (rows["sigma"] == sigma).any():
            raise ValueError(
                f"no CERTIFY results at sigma = {sigma:g} in the summary (sigmas: "
                f"{', '.join(f'{s:g}' for s in sorted(set(rows['sigma'])))})"
            )
        at = rows[(rows["sigma"] == sigma) & (rows.get("checkpoint", "last") == "last")]
        data = curves(at, radius_max)
        fig, ax = _axes(f"{title or dataset}: CERTIFY at sigma = {sigma:g}", radius_max)
        for method, part in data.groupby("method", sort=False):
            runs = part["run"].unique()
            line = _envelope(part) if len(runs) > 1 else part
            label = f"{method} (best of {len(runs)} runs)" if len(runs) > 1 else runs[0]
            ax.plot(
                line["radius"],
                line["certified_accuracy"],
                color=method_color(method),
                linewidth=2,
                linestyle=LINESTYLES.get(method, "-"),
                label=label,
            )
            mine = points[points["run"].isin(runs) & (points["sigma"] == sigma)]
            for setting, pts in mine.groupby("label", sort=False):
                ax.plot(
                    pts["radius"],
                    pts["value"],
                    linestyle="none",
                    marker="o",
                    markerfacecolor="none",
                    markeredgecolor=method_color(method),
                    markersize=7,
                    label=f"{setting}, published",
                )
        files = _cohen_rows(summary, "published")
        files = files[(files["sigma"] - sigma).abs() < 1e-12]
        if len(files):  # the papers' own per-example files at this σ, on the same axes
            for model, part in curves(files, radius_max).groupby("model", sort=False):
                ax.plot(part["radius"], part["certified_accuracy"], color=method_color(part["method"].iloc[0]),
                        linewidth=1.2, linestyle=(0, (1, 1)), label=model)  # fmt: skip
        ax.legend(frameon=True, fontsize="x-small")
        paths += save_figure(fig, Path(figures_dir) / f"certified_accuracy_sigma{sigma_tag(sigma)}")
    return paths


def plot_sigma_sweeps(
    summary: pd.DataFrame,
    published: pd.DataFrame | None,
    figures_dir: str | Path,
    radius_max: float,
    title: str = "",
    methods=None,
) -> list[Path]:
    """sigma_sweep_<method>.{png,pdf}: one thin line per σ (best run at that σ) and the envelope over σ in black,
    as Cohen's figure; the method's published envelope (setting "envelope", same dataset) as black markers."""
    rows = _cohen_rows(summary)
    rows = rows[rows.get("checkpoint", "last") == "last"]
    _, sweeps = sigmas_and_sweeps(rows)
    points = _published_points(rows, published)
    paths = []
    dataset = summary["dataset"].iloc[0] if len(summary) else ""
    for method in sweeps if methods is None else methods:
        if method not in sweeps:
            raise ValueError(f"{method} has no sigma sweep in the summary (methods with one: {', '.join(sweeps)})")
        data = curves(rows[rows["method"] == method], radius_max)
        sigmas = sorted(set(data["sigma"]))
        fig, ax = _axes(f"{title or dataset}: {method}, sigma sweep", radius_max)
        for shade, sigma in zip(shades(method_color(method), len(sigmas)), sigmas):
            line = _envelope(data[data["sigma"] == sigma])
            ax.plot(
                line["radius"],
                line["certified_accuracy"],
                color=shade,
                linewidth=1.2,
                linestyle=LINESTYLES.get(method, "-"),
                label=f"sigma = {sigma:g}",
            )
            mine = points[points["run"].isin(data[data["sigma"] == sigma]["run"]) & (points["sigma"] == sigma)]
            if len(mine):
                ax.plot(
                    mine["radius"],
                    mine["value"],
                    linestyle="none",
                    marker="o",
                    markerfacecolor="none",
                    markeredgecolor=shade,
                    markersize=6,
                    label=f"sigma = {sigma:g}, published",
                )
        envelope = _envelope(data)
        ax.plot(envelope["radius"], envelope["certified_accuracy"], color="black", linewidth=2.2, label="envelope")
        if published is not None:
            env = published[
                (published["setting"] == "envelope")
                & (published["method"] == method)
                & (published["dataset"] == dataset)
            ]
            if len(env):
                ax.plot(
                    env["radius"],
                    env["value"],
                    linestyle="none",
                    marker="s",
                    markerfacecolor="none",
                    markeredgecolor="black",
                    markersize=6,
                    label=f"envelope, published ({env['paper'].iloc[0]})",
                )
        ax.legend(frameon=True, fontsize="x-small")
        paths += save_figure(fig, Path(figures_dir) / f"sigma_sweep_{method}")
    return paths


def overlay_linf_published(ax, summary: pd.DataFrame, published: pd.DataFrame | None, colors: dict) -> None:
    """Published ℓ∞ points (clean, PGD, AutoAttack, certified at ε) of the runs' settings, same dataset: filled
    markers certified, hollow empirical, in the run's colour."""
    points = _published_points(summary, published, metric_norm="linf")
    label_of = dict(zip(summary["run"], summary["run"]))
    for (run, label), pts in points.groupby(["run", "label"], sort=False):
        color = next((c for model, c in colors.items() if model.startswith(label_of[run])), "black")
        for metric, marker in (
            ("certified_accuracy", "o"),
            ("clean_accuracy", "D"),
            ("pgd_accuracy", "v"),
            ("autoattack_accuracy", "^"),
        ):
            sel = pts[pts["metric"] == metric]
            if len(sel):
                ax.plot(
                    sel["radius"],
                    sel["value"],
                    linestyle="none",
                    marker=marker,
                    markersize=7,
                    markerfacecolor=color if metric == "certified_accuracy" else "none",
                    markeredgecolor=color,
                    label=f"{label}: {metric.replace('_', ' ')}, published",
                )


def evaluated_radii(certify_file) -> list[float] | None:
    """The ε values an ℓ∞ grid or single-ε evaluator actually evaluated (None for exact radii: smoothing, margin)."""
    meta = json.loads(Path(certify_file).with_suffix(".json").read_text())
    if meta.get("attack_eps") is not None:
        return [float(meta["attack_eps"])]
    if meta.get("norm") == "linf" and meta.get("eps_grid") and meta.get("max_radius") is not None:
        return sorted(float(e) for e in meta["eps_grid"])
    return None


def curves(summary: pd.DataFrame, radius_max: float, step: float = 0.01) -> pd.DataFrame:
    """Certified (or empirical) accuracy on a radius grid (step 0.01, as Cohen's analyze.py), per model, mean over
    seeds. An evaluator that only looked at some ε (an ε grid, or one ε) is drawn as what its data say between them:
    a certificate at ε covers every smaller radius, so a certified curve takes the value of the next evaluated ε to
    the right; robust accuracy never rises with the radius, so an attack's upper bound holds its value from the last
    evaluated ε to the left (it cannot dip below a certificate of the same model between grid points). The evaluated
    ε are in the grid too, flagged `evaluated` (the figures mark them); past the largest, the curve is unknown."""
    grid = np.round(np.arange(0.0, radius_max + step / 2, step), 10)
    parts = []
    for label, row in zip(run_labels(summary), summary.itertuples(index=False)):
        frame = read_tsv(row.certify_file)
        ok = frame["radius"].to_numpy()[frame["correct"].to_numpy() == 1]
        points = evaluated_radii(row.certify_file) if getattr(row, "norm", "l2") == "linf" else None
        radii = grid if points is None else np.union1d(grid, [p for p in points if p <= radius_max])
        at = radii
        if points is not None and getattr(row, "kind", "certified") == "empirical":
            known = np.array([0.0, *points])
            at = known[np.searchsorted(known, radii + 1e-12, side="right") - 1]  # the evaluated ε to the left
        acc = (ok[None, :] >= at[:, None] - 1e-12).sum(axis=1) / len(frame)
        if points is not None:
            acc = np.where(radii <= max(points) + 1e-12, acc, np.nan)  # past the last evaluated ε: unknown, not 0
        evaluated = (
            np.isin(np.round(radii, 12), np.round(points, 12)) if points is not None else np.zeros(len(radii), bool)
        )
        parts.append(
            pd.DataFrame(
                {
                    "model": label,
                    "run": row.run,
                    "certifier": row.certifier,
                    "checkpoint": getattr(row, "checkpoint", "last"),
                    "method": row.method,
                    "sigma": row.sigma,
                    "seed": row.seed,
                    "kind": getattr(row, "kind", "certified"),
                    "radius": radii,
                    "evaluated": evaluated,
                    "certified_accuracy": acc,
                }
            )
        )
    data = pd.concat(parts)
    return data.groupby(
        ["model", "run", "certifier", "checkpoint", "method", "sigma", "kind", "radius", "evaluated"],
        sort=False,
        dropna=False,
        as_index=False,
    )["certified_accuracy"].mean()


def plot_certified_accuracy(
    summary: pd.DataFrame,
    out_stem: str | Path,
    radius_max: float,
    title: str = "",
    norm: str = "l2",
    published: pd.DataFrame | None = None,
) -> list[Path]:
    """Accuracy vs radius, one line per run × certifier, in the papers' style; PNG and PDF. Colour: a shade of the
    method's hue (see `run_colors`). ℓ2: line style per method (MACER's figures). ℓ∞: certified curves solid,
    empirical (attack) curves dashed, never mixed up, and the runs' published points as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = curves(summary, radius_max, step=0.01 if norm == "l2" else radius_max / 200)
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.3)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    firsts = data.drop_duplicates("model")
    models_ = list(firsts["model"])
    palette = run_colors(models_, list(firsts["method"]))
    for model in models_:
        part = data[data["model"] == model]
        empirical = part["kind"].iloc[0] == "empirical"
        style = LINESTYLES.get(part["method"].iloc[0], "-") if norm == "l2" else ("--" if empirical else "-")
        ax.plot(
            part["radius"],
            part["certified_accuracy"],
            color=palette[model],
            linewidth=2,
            linestyle=style,
            label=model + (" (empirical)" if empirical else ""),
        )
        points = part[part["evaluated"]]
        if len(points):  # the ε an evaluator looked at; between them the line is what those values imply
            ax.plot(points["radius"], points["certified_accuracy"], linestyle="none", marker="o", markersize=4,
                    color=palette[model])  # fmt: skip
    if norm == "l2":
        ax.set(xlim=(0, radius_max), ylim=(0, 1), xlabel=r"radius ($\ell_2$)", ylabel="certified accuracy")
    else:
        overlay_linf_published(ax, summary, published, palette)
        ax.set(
            xlim=(0, radius_max),
            ylim=(0, 1),
            xlabel=r"radius ($\ell_\infty$, pixels)",
            ylabel="accuracy: certified (solid), empirical (dashed)",
        )
    ax.set_title(
        textwrap.fill(title or f"{summary['dataset'].iloc[0]}: certified accuracy vs radius", 60), fontsize="medium"
    )
    ax.legend(frameon=True, fontsize="small")
    return save_figure(fig, out_stem)
