"""The report's tables (Markdown, LaTeX, CSV) from summary.csv: certified accuracy and ACR (as MACER's Tables 1–2),
the upper envelope (Salman et al.), the certification cost of every smoothing certifier, ℓ∞ accuracy (certified and
empirical kept apart), training time beside the papers' own (MACER's Table 3), and reproduced vs published.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..certify.registry import CERTIFIERS
from .compare import caption as compare_caption
from .compare import comparison_table, published_refs, ref_label
from .labels import checkpoints, footnotes, of_norm, ours, radius_columns, run_labels
from .published import select


def accuracy_table(summary: pd.DataFrame, norm: str = "l2") -> pd.DataFrame:
    """Accuracy at each configured radius + ACR (average radius), mean over seeds (as MACER's Tables 1–2). For ℓ∞
    a `kind` column says which rows are certified and which empirical (an attack's upper bound)."""
    summary = of_norm(summary, norm)
    radius_cols = radius_columns(summary)
    keys = ["model", "method", "sigma"] if norm == "l2" else ["model", "method", "kind"]
    table = (
        summary.assign(model=run_labels(summary))
        .groupby(keys, sort=False, dropna=False)[radius_cols + ["acr", "seed"]]
        .agg({**{c: "mean" for c in radius_cols + ["acr"]}, "seed": "nunique"})
        .rename(columns={c: c.split("@")[1] for c in radius_cols} | {"acr": "ACR", "seed": "seeds"})
        .reset_index()
    )
    return table


def envelope_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method and certifier, the best certified accuracy over all its runs at each radius (Salman et al.'s
    "upper envelope" over a grid), mean over seeds first; `best` names the run behind each column (ties → the run
    with the higher clean accuracy)."""
    summary = ours(of_norm(summary, "l2"))
    radius_cols = radius_columns(summary)
    per_run = summary.groupby(["method", "certifier", "run"], sort=False)[radius_cols].mean().reset_index()
    rows = []
    for (method, certifier), group in per_run.groupby(["method", "certifier"], sort=False):
        row = {"method": method, "certifier": certifier, "runs": len(group)}
        best = []
        for col in radius_cols:
            order = group.sort_values([col, radius_cols[0]], ascending=False, kind="stable")
            row[col.split("@")[1]] = float(order[col].iloc[0])
            best.append(f"{col.split('@')[1]}: {order['run'].iloc[0] if order[col].iloc[0] > 0 else '-'}")
        row["best"] = "; ".join(best)
        rows.append(row)
    return pd.DataFrame(rows)


def cost_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Every smoothing certifier of a run beside CERTIFY on the same images (CERTIFY, adaptive, sequential, ...):
    certified accuracy at the radii and its gap to CERTIFY's at each radius (`gap@r`, certifier − CERTIFY: negative
    where it certifies fewer images) and the largest |gap|, noisy samples per image — mean, median and 90th
    percentile, since a sequential certifier's cost is skewed (most images stop early, a few run to the cap) — and
    the mean's share of CERTIFY's, seconds per image, and the path and dtype that computed them (mean over seeds).
    The comparison columns are empty where the run has no CERTIFY rows or they cover other images."""
    summary = of_norm(summary, "l2")
    radius_cols = radius_columns(summary)
    if summary.empty:
        return pd.DataFrame()
    summary = summary.assign(checkpoint=checkpoints(summary))
    for col in ("samples_per_example", "samples_median", "samples_p90", "certify_path", "certify_dtype", "subset"):
        if col not in summary:
            summary[col] = "" if col in ("certify_path", "certify_dtype", "subset") else float("nan")
    table = (
        summary.groupby(["run", "checkpoint", "certifier"], sort=False)
        .agg(
            **{c: (c, "mean") for c in radius_cols},
            samples_per_example=("samples_per_example", "mean"),
            samples_median=("samples_median", "mean"),
            samples_p90=("samples_p90", "mean"),
            sec_per_example=("certify_sec_per_example", "mean"),
            path=("certify_path", "first"),
            dtype=("certify_dtype", "first"),
            seeds=("seed", "nunique"),
            images=("subset", lambda s: tuple(sorted(set(s)))),
            examples=("examples", "first"),
        )
        .reset_index()
    )
    cohen = table[table["certifier"] == "cohen"].set_index(["run", "checkpoint"])
    share, gap, per_radius = [], [], {c: [] for c in radius_cols}
    for _, row in table.iterrows():
        key = (row["run"], row["checkpoint"])
        base = cohen.loc[key] if key in cohen.index else None
        if base is not None and (base["images"], base["examples"]) != (row["images"], row["examples"]):
            base = None  # not the same images: no comparison
        share.append(row["samples_per_example"] / base["samples_per_example"] if base is not None else float("nan"))
        for c in radius_cols:
            per_radius[c].append(row[c] - base[c] if base is not None else float("nan"))
        gap.append(
            max((abs(row[c] - base[c]) for c in radius_cols), default=float("nan"))
            if base is not None
            else float("nan")
        )
    table["samples_vs_cohen"] = share
    table["max_acc_gap_vs_cohen"] = gap
    for c in radius_cols:
        table[f"gap@{c.split('@')[1]}"] = per_radius[c]
    return table.drop(columns=["images", "examples"]).rename(columns={c: c.split("@")[1] for c in radius_cols})


#: The paper's own timing columns of the timing table (metric in published.csv → column).
PAPER_TIMING = {"sec_per_epoch": "paper_sec_per_epoch", "epochs": "paper_epochs", "total_hours": "paper_total_hours"}


def robust_accuracy(summary: pd.DataFrame) -> pd.Series:
    """Per summary row, the accuracy under its standalone attack at its one ε (a `*-at-eps` evaluator's radius is ε
    where the clean prediction is right and the attack fails, else 0, so ACR = ε × that accuracy); NaN for grid
    evaluators and certificates."""
    single = summary["certifier"].map(lambda c: bool(getattr(CERTIFIERS.get(c), "single_eps", False)))
    radius = pd.to_numeric(summary.get("max_radius", pd.Series(np.nan, index=summary.index)), errors="coerce")
    return (summary["acr"] / radius).where(single & (radius > 0))


def timing_table(summary: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """sec/epoch, epochs, total hours and ACR per run (as MACER's Table 3; for ℓ∞ rows the mean radius, capped at the
    ε grid's end for attacks), clean accuracy, robust accuracy under a standalone attack at its ε (the
    `*-at-eps` rows: the backward-smoothing paper's comparison of training time and robustness), the device and
    the precision it trained in. A run with a selected "best" checkpoint is timed
    once, on its last-epoch rows (training is the same run). Where a run names a published setting with a timing
    (MACER's Table 3, the ℓ∞-dist v2 README), the paper's sec/epoch, epochs, hours and hardware sit beside ours."""
    summary = summary[checkpoints(summary) == "last"]
    table = (
        summary.assign(model=run_labels(summary), robust_acc=robust_accuracy(summary))
        .groupby(["model", "method"], sort=False)
        .agg(
            run=("run", "first"),
            sec_per_epoch=("train_sec_per_epoch", "mean"),
            sec_per_epoch_with_eval=("train_eval_sec_per_epoch", "mean"),
            epochs=("epochs", "first"),
            total_hours=("train_hours", "mean"),
            ACR=("acr", "mean"),
            clean_acc=("clean_acc", "mean"),
            robust_acc=("robust_acc", "mean"),
            certify_sec_per_example=("certify_sec_per_example", "mean"),
            device=("device", "first"),
            precision=("train_dtype", "first"),
        )
        .reset_index()
    )
    paper = {col: [] for col in ("paper_setting", *PAPER_TIMING.values(), "paper_hardware")}
    refs = dict(zip(summary["run"], summary.get("published", pd.Series("", index=summary.index))))
    for run in table["run"]:
        found = {}
        for ref in published_refs(refs.get(run, "")) if published is not None else []:
            rows = select(published, ref["paper"], ref["dataset"], ref["setting"])
            rows = rows[rows["metric"].isin(PAPER_TIMING)]
            if len(rows) and not found:
                found = {"paper_setting": ref_label(ref), "paper_hardware": rows["hardware"].iloc[0]}
                found.update({PAPER_TIMING[m]: v for m, v in zip(rows["metric"], rows["value"])})
        for col in paper:
            paper[col].append(found.get(col, ""))
    return table.drop(columns="run").assign(**paper)


def markdown(table: pd.DataFrame, floatfmt: str) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |\n|" + "---|" * len(table.columns) + "\n"
    cells = table.apply(
        lambda col: col.map(lambda v: ("" if np.isnan(v) else format(v, floatfmt)) if isinstance(v, float) else str(v))
    )
    return header + "".join("| " + " | ".join(row) + " |\n" for row in cells.itertuples(index=False))


_TEX_SPECIAL = re.compile(r"[\\&%$#_{}]")


def _tex_escape(text: str) -> str:
    return _TEX_SPECIAL.sub(lambda m: r"\textbackslash{}" if m.group() == "\\" else "\\" + m.group(), text)


def _latex(table: pd.DataFrame, bold_best: list[str], caption: str, notes: list[str] = ()) -> str:
    """booktabs table, 2-decimal values (3 for ACR), the best value per column in bold (Cohen's analyze.py style)."""

    def fmt(col, v):
        if not isinstance(v, float):
            return _tex_escape(str(v))
        if np.isnan(v):
            return ""
        text = f"{v:.3f}" if col == "ACR" else f"{v:.2f}"
        return rf"\textbf{{{text}}}" if col in bold_best and v == table[col].max() and v > 0 else text

    cols = list(table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        r"\begin{tabular}{" + "l" * 2 + "r" * (len(cols) - 2) + "}",
        r"\toprule",
        " & ".join(str(c).replace("_", r"\_") for c in cols) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(fmt(c, v) for c, v in zip(cols, row)) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip\footnotesize " + _tex_escape(n) for n in notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def describe_protocol(summary: pd.DataFrame) -> str:
    """The evaluation protocol(s) behind a table: each distinct test subset once, then each distinct smoothing
    setting (n0, n, alpha) once, and the precision of any row not certified in float32."""
    subsets = [f"{p.dataset}: {p.examples} test images ({p.subset})"
               for p in summary.drop_duplicates(["dataset", "examples", "subset"]).itertuples(index=False)]  # fmt: skip
    smoothing = summary[summary["n"].notna()] if "n" in summary else summary.iloc[0:0]
    settings = [f"smoothing: n0 = {int(p.n0)}, n = {int(p.n)}, alpha = {p.alpha}"
                for p in smoothing.drop_duplicates(["n0", "n", "alpha"]).itertuples(index=False)]  # fmt: skip
    dtypes = set(summary.get("certify_dtype", pd.Series(dtype=str)).dropna()) | set(
        summary.get("train_dtype", pd.Series(dtype=str)).dropna()
    )
    precision = [f"precision: {', '.join(sorted(d for d in dtypes if d))} (float32 is the papers')"] if (
        dtypes - {"float32", ""}
    ) else []  # fmt: skip
    return "; ".join(dict.fromkeys(subsets + settings + precision))


def write_tables(
    summary: pd.DataFrame,
    tables_dir: str | Path,
    what: tuple[str, ...] = ("l2", "timing"),
    published: pd.DataFrame | None = None,
) -> list[Path]:
    """`what`: "l2" (certified accuracy + envelope), "linf" (ℓ∞ certified and empirical accuracy), "timing",
    "published" (reproduced vs published; needs `published`, the table of methods.report.published)."""
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tables = []
    if "l2" in what:
        l2 = of_norm(summary, "l2")
        acc, protocol = accuracy_table(summary), describe_protocol(l2)
        radius_cols = [c for c in acc.columns if re.fullmatch(r"\d+\.\d+", str(c))]
        tables += [
            (
                "certified_accuracy",
                l2,
                acc,
                radius_cols + ["ACR"],
                f"Approximate certified accuracy at each l2 radius and ACR. {protocol}.",
                ".3f",
            ),
            (
                "envelope",
                l2,
                envelope_table(summary),
                radius_cols,
                f"Upper envelope: the best run of each method at each l2 radius (as Salman et al.'s headline "
                f"tables). {protocol}.",
                ".3f",
            ),
            (
                "certification_cost",
                l2,
                cost_table(summary),
                [],
                f"Certification cost: every smoothing certifier of a run side by side on the same images, with "
                f"its noisy samples per image (mean, median, 90th percentile) and seconds per image, the path "
                f"(fast / plain) and dtype of the base classifier, and, against CERTIFY: the share of its samples, "
                f"the gap in certified accuracy at each radius (gap@r, negative = fewer certified) and the largest "
                f"over the radii. The adaptive and sequential certifiers only decide the configured radii (their "
                f"n is a maximum). {protocol}.",
                ".4g",
            ),
        ]
    if "linf" in what:
        linf = of_norm(summary, "linf")
        acc = accuracy_table(summary, "linf")
        tables.append(
            (
                "linf_accuracy",
                linf,
                acc,
                [],  # no "best" in bold: certified and empirical don't compete
                "Accuracy at each l-inf radius (pixel units; column 0.00 = clean accuracy). kind = certified: "
                "a guarantee (l-inf-dist margin / interval bounds); kind = empirical: the accuracy under an "
                "attack, an UPPER bound on robust accuracy, not a certificate. ACR = mean radius (for grid "
                f"evaluators capped at the grid's largest eps). {describe_protocol(linf)}.",
                ".3f",
            )
        )
    if "timing" in what:
        last = summary[checkpoints(summary) == "last"]  # the rows the timing table labels: its footnotes are theirs
        tables.append(
            (
                "timing",
                last,
                timing_table(summary, published),
                [],
                f"Training cost per run, beside the paper's own timing and hardware where the run names "
                f"a published setting (paper_*: as published; devices differ, so compare ratios between "
                f"methods rather than seconds). {describe_protocol(summary)}.",
                ".4g",
            )
        )
    if "published" in what:
        dataset = summary["dataset"].iloc[0] if len(summary) else ""
        compared = comparison_table(summary, published)
        tables.append(("reproduced_vs_published", summary, compared, [], compare_caption(compared, dataset), ".4g"))
    for name, rows, table, bold, caption, floatfmt in tables:
        written += write_table(tables_dir, name, rows, table, bold, caption, floatfmt)
    return written


def write_table(tables_dir: Path, name: str, rows: pd.DataFrame, table: pd.DataFrame, bold: list[str], caption: str,
                floatfmt: str) -> list[Path]:  # fmt: skip
    """<name>.csv, .md (caption, table, the footnotes of `rows`, the summary rows the table labels) and .tex."""
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    _, notes = footnotes(rows)
    paths = [tables_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    table.to_csv(paths[0], index=False)
    paths[1].write_text(f"{caption}\n\n" + markdown(table, floatfmt) + "".join(f"\n{n}\n" for n in notes))
    paths[2].write_text(_latex(table, bold, caption.replace("_", r"\_"), notes))
    return paths
