"""The report step: the figures and tables a summary asks for, and `rebuild`, everything again from results/ alone.

    python -m methods report --summary results/digits/summary.csv --figures-dir figures/digits \\
                             --tables-dir results/digits/tables --what l2 timing
    python -m methods rebuild --radii 0 0.25 0.5 --linf-radii 0 0.1
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.paths import PUBLISHED_CSV
from .claims import caption as claims_caption
from .claims import claims_table
from .cost import cost_robustness_table, plot_cost_robustness
from .figures import plot_certified_accuracy, plot_per_sigma, plot_sigma_sweeps
from .labels import of_norm
from .published import load
from .summary import TSV_PATH, summarize
from .tables import write_table, write_tables


def _published(path: str | Path | None) -> pd.DataFrame:
    return load(path or PUBLISHED_CSV)


def report(
    summary_csv: str | Path,
    figures_dir: str | Path,
    tables_dir: str | Path,
    radius_max: float,
    title: str = "",
    what: tuple[str, ...] = ("l2", "timing"),
    published_csv: str | Path | None = None,
    sigmas=None,
    methods=None,
) -> list[Path]:
    """The figures and tables of `what`:
    "l2": certified_accuracy figure (every run), the certified_accuracy and envelope tables;
    "sigma": one figure per σ of `sigmas` (default all), every method with the published points (report.figures);
    "sweep": one σ-sweep figure per method of `methods` (default all with two σ or more);
    "linf": linf_accuracy figure and table (`radius_max` is then the ℓ∞ axis limit);
    "timing": the timing table, beside the papers' own timings;
    "published": the reproduced-vs-published table (report.compare);
    "claims": the papers' claims checked on these runs (report.claims);
    "cost": robustness against training time, figure and table (report.cost).
    Published numbers come from `published_csv` (default workflow/resources/published.csv)."""
    summary = pd.read_csv(summary_csv)
    published = _published(published_csv)
    l2 = of_norm(summary, "l2")
    paths = []
    if "l2" in what:
        paths += plot_certified_accuracy(l2, Path(figures_dir) / "certified_accuracy", radius_max, title)
    if "sigma" in what:
        paths += plot_per_sigma(l2, published, figures_dir, radius_max, title, sigmas)
    if "sweep" in what:
        paths += plot_sigma_sweeps(l2, published, figures_dir, radius_max, title, methods)
    if "linf" in what:
        paths += plot_certified_accuracy(
            of_norm(summary, "linf"),
            Path(figures_dir) / "linf_accuracy",
            radius_max,
            title,
            norm="linf",
            published=published,
        )
    if "claims" in what:
        table = claims_table(summary)
        dataset = summary["dataset"].iloc[0] if len(summary) else ""
        paths += write_table(tables_dir, "claims", summary.iloc[0:0], table, [], claims_caption(table, dataset), ".4g")
    if "cost" in what:
        table = cost_robustness_table(summary, published)
        paths += plot_cost_robustness(table, Path(figures_dir) / "cost_robustness", title)
        paths += write_table(tables_dir, "cost_robustness", summary[summary["run"].isin([])], table, [],
                             "Robustness against training cost, per run (its last epoch; mean over seeds): ACR under "
                             "CERTIFY for l2 smoothing, the certified accuracy at the run's eps for l-inf-dist nets, "
                             "the accuracy under the run's standalone attack at its eps (an upper bound) for empirical "
                             "l-inf methods; train_hours measured here on `device`, paper_total_hours the paper's own "
                             "on its hardware where the run names one; hours_per_unit = train_hours / robustness.",
                             ".4g")  # fmt: skip
    return paths + write_tables(summary, tables_dir, what, published)


def rebuild(
    results_dir: str | Path,
    figures_root: str | Path,
    radii: list[float],
    linf_radii: list[float],
    radius_max: float,
    linf_radius_max: float,
    title: str = "",
    notes: dict | None = None,
    published: dict | None = None,
    published_csv: str | Path | None = None,
) -> list[Path]:
    """Every dataset's summary.csv, figures and tables from an existing results/ tree alone (the per-example TSVs,
    their sidecars and, for timing, the train logs): what a user who copied results/ from a cluster runs on a laptop.
    Nothing is trained or certified."""
    results_dir = Path(results_dir)
    paths = []
    for dataset_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        tsvs = sorted(dataset_dir.glob("*/seed*/certify*/*.tsv"))
        tsvs = [t for t in tsvs if TSV_PATH.search(t.as_posix())]
        if not tsvs:
            continue
        summary_csv = dataset_dir / "summary.csv"
        summary = summarize(tsvs, radii, summary_csv, notes, linf_radii, published)
        paths.append(summary_csv)
        norms = set(summary["norm"])
        figures_dir, tables_dir = Path(figures_root) / dataset_dir.name, dataset_dir / "tables"
        if "l2" in norms:
            paths += report(
                summary_csv, figures_dir, tables_dir, radius_max, title, ("l2", "sigma", "sweep"), published_csv
            )
        if "linf" in norms:
            paths += report(summary_csv, figures_dir, tables_dir, linf_radius_max, title, ("linf",), published_csv)
        paths += report(
            summary_csv,
            figures_dir,
            tables_dir,
            radius_max,
            title,
            ("timing", "published", "claims", "cost"),
            published_csv,
        )
    if not paths:
        raise FileNotFoundError(
            f"no results/<dataset>/<run>/seed<s>/certify/<certifier>.tsv files under {results_dir}: nothing to rebuild"
        )
    return paths
