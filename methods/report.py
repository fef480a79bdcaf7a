"""summary.csv, the certified-accuracy-vs-radius figure and the tables, from the per-example TSVs alone.

Metrics (../shared/METHODS.md §0): approximate certified accuracy at r = mean(correct ∧ radius ≥ r) over the
certified subset; ACR = mean(radius · correct), abstentions and wrong predictions counting 0. Several seeds of a run
are averaged in the tables and figure; summary.csv keeps one row per run × certifier × seed.
"""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .certify import read_tsv

TSV_PATH = re.compile(r"(?P<dataset>[^/]+)/(?P<run>[^/]+)/seed(?P<seed>\d+)/certify(?P<best>-best)?/"
                      r"(?P<certifier>[^/]+)\.tsv$")


def radius_column(r: float) -> str:
    """certified_acc@0.25 for the ℓ2 grid; four decimals where two would merge ℓ∞ radii (8/255 → @0.0314)."""
    return f"certified_acc@{r:.2f}" if abs(round(r, 2) - r) < 1e-12 else f"certified_acc@{r:.4f}"


def certified_accuracy(frame: pd.DataFrame, radius: float) -> float:
    return float(((frame["correct"] == 1) & (frame["radius"] >= radius)).mean())


def average_certified_radius(frame: pd.DataFrame) -> float:
    return float((frame["radius"] * frame["correct"]).mean())


def _train_log_stats(run_dir: Path) -> dict:
    """Train-only seconds per epoch, and train + the per-epoch test passes (test loss, checkpoint selection) where
    the run made any (the papers do not say which of the two their sec/epoch is, so both are reported)."""
    if not (run_dir / "train_log.tsv").exists():  # results copied without their training logs: no timing
        return {"train_sec_per_epoch": float("nan"), "train_eval_sec_per_epoch": float("nan"),
                "epochs": float("nan"), "train_hours": float("nan")}
    log = pd.read_csv(run_dir / "train_log.tsv", sep="\t")
    passes = [pd.to_numeric(log[c], errors="coerce") for c in ("eval_seconds", "select_seconds") if c in log]
    passes = [p for p in passes if p.notna().all()]
    with_eval = float((log["train_seconds"] + sum(passes)).mean()) if passes else float("nan")
    return {"train_sec_per_epoch": float(log["train_seconds"].mean()), "train_eval_sec_per_epoch": with_eval,
            "epochs": int(len(log)), "train_hours": float(log["train_seconds"].sum()) / 3600}


def summarize(tsv_files: list[str | Path], radii: list[float], out: str | Path,
              notes: dict[str, str] | None = None, linf_radii: list[float] | None = None,
              published: dict[str, list[dict]] | None = None) -> pd.DataFrame:
    """One row per per-example TSV (run × certifier × seed × checkpoint); paths must be
    <dataset>/<run>/seed<s>/certify/<c>.tsv (the last epoch) or .../certify-best/<c>.tsv (the epoch picked by
    train.select_best; `checkpoint` = "best", `selected_by` says how and `best_epoch` which).

    Accuracy columns are at `radii` for ℓ2 rows and at `linf_radii` (pixel units) for ℓ∞ rows; a row leaves the
    other norm's columns empty. For ℓ∞ rows `kind` says whether the radius is certified or empirical.

    `notes` maps run names to the config's caveats (`note`), which the tables print as footnotes beside the
    method's own provenance (`SOURCE`) and the certifier's. `published` maps run names to the published settings
    they reproduce (config `published`), kept as JSON in the `published` column for methods.compare.
    """
    from .certify import CERTIFIERS
    from .registry import get_method

    notes, published = notes or {}, published or {}
    rows = []
    for tsv in map(Path, tsv_files):
        match = TSV_PATH.search(tsv.as_posix())
        if not match:
            raise ValueError(f"{tsv}: not a results/<dataset>/<run>/seed<s>/certify[-best]/<certifier>.tsv path")
        frame = read_tsv(tsv)
        meta = json.loads(tsv.with_suffix(".json").read_text())
        info = meta["model_info"]
        run_dir = tsv.parent.parent
        row = {"dataset": match["dataset"], "run": match["run"], "method": info["method"],
               "seed": int(match["seed"]), "certifier": match["certifier"],
               "checkpoint": "best" if match["best"] else "last", "norm": CERTIFIERS[match["certifier"]].norm,
               "kind": CERTIFIERS[match["certifier"]].kind, "sigma": meta.get("sigma"),
               "clean_acc": float(frame["correct"].mean()), "acr": average_certified_radius(frame)}
        norm_radii = linf_radii if row["norm"] == "linf" and linf_radii else radii
        row.update({radius_column(r): certified_accuracy(frame, r) for r in norm_radii})
        row.update(_train_log_stats(run_dir))
        row.update({"certify_sec_per_example": float(frame["time"].mean()),
                    "samples_per_example": float(frame["samples"].mean()) if "samples" in frame else float("nan"),
                    "certify_path": "/".join(sorted(set(frame["path"]))) if "path" in frame else "",
                    "certify_dtype": "/".join(sorted(set(frame["dtype"]))) if "dtype" in frame else "",
                    "device": info["device"],
                    "certify_device": meta["provenance"]["device_name"], "examples": len(frame),
                    "subset": "start {start}, skip {skip}, count {count}".format(**meta["subset"]),
                    "n0": meta.get("n0"), "n": meta.get("n"), "alpha": meta.get("alpha"),
                    "max_radius": meta.get("max_radius"),
                    "certify_file": tsv.as_posix(), "source": get_method(info["method"]).SOURCE,
                    "certifier_note": CERTIFIERS[match["certifier"]].note,
                    "note": notes.get(match["run"], ""), "best_epoch": info.get("best_epoch"),
                    "selected_by": info.get("selected_by", ""),
                    "published": json.dumps(published[match["run"]]) if published.get(match["run"]) else ""})
        rows.append(row)
    summary = pd.DataFrame(rows).sort_values(["dataset", "method", "sigma", "run", "certifier", "checkpoint",
                                              "seed"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out, index=False)
    return summary


# ---------------------------------------------------------------- tables

def _checkpoints(summary: pd.DataFrame) -> pd.Series:
    """"last" for every row of a summary written before checkpoints were told apart."""
    return summary.get("checkpoint", pd.Series("last", index=summary.index)).fillna("last")


def _label(summary: pd.DataFrame) -> pd.Series:
    """Run name, plus the certifier when a run has several, plus "best"/"last" when a run has both checkpoints, plus
    footnote marks (see `footnotes`)."""
    several = summary.groupby("run")["certifier"].transform("nunique") > 1
    label = summary["run"].where(~several, summary["run"] + " (" + summary["certifier"] + ")")
    checkpoint = _checkpoints(summary)
    both = checkpoint.groupby(summary["run"]).transform("nunique") > 1
    label = label.where(~both, label + " [" + checkpoint + "]")
    marks, _ = footnotes(summary)
    return label + marks


def _caveats(row) -> list[str]:
    """What a reader must know about a row: a method without official code, a reconstructed certifier, a note."""
    out = []
    source = str(row.get("source", "") or "")
    if source and not source.startswith("official code"):
        out.append(f"{row['method']}: {source}")
    for key in ("certifier_note", "note"):
        text = row.get(key, "")
        if isinstance(text, str) and text:
            out.append(f"{row['certifier']}: {text}" if key == "certifier_note" else f"{row['run']}: {text}")
    selected_by = row.get("selected_by", "")
    if row.get("checkpoint") == "best" and isinstance(selected_by, str) and selected_by:
        out.append(f"{row['run']} [best]: the epoch with the highest {selected_by} (selected on test images, as the "
                   f"paper's code does; see best_epoch in summary.csv)")
    return out


def footnotes(summary: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """(" [1,2]"-style marks per row, numbered footnote lines) for the caveats of the summary's rows."""
    texts: list[str] = []
    marks = []
    for _, row in summary.iterrows():
        numbers = []
        for caveat in _caveats(row):
            if caveat not in texts:
                texts.append(caveat)
            numbers.append(texts.index(caveat) + 1)
        marks.append(f" [{','.join(map(str, numbers))}]" if numbers else "")
    return pd.Series(marks, index=summary.index, dtype=object), [f"[{i}] {t}" for i, t in enumerate(texts, 1)]


def _radius_cols(summary: pd.DataFrame) -> list[str]:
    """The accuracy columns these rows fill (the other norm's radii stay empty)."""
    return [c for c in summary.columns if c.startswith("certified_acc@") and summary[c].notna().any()]


def _of_norm(summary: pd.DataFrame, norm: str) -> pd.DataFrame:
    return summary[summary.get("norm", pd.Series("l2", index=summary.index)) == norm]


def accuracy_table(summary: pd.DataFrame, norm: str = "l2") -> pd.DataFrame:
    """Accuracy at each configured radius + ACR (average radius), mean over seeds (as MACER's Tables 1–2). For ℓ∞
    a `kind` column says which rows are certified and which empirical (an attack's upper bound)."""
    summary = _of_norm(summary, norm)
    radius_cols = _radius_cols(summary)
    keys = ["model", "method", "sigma"] if norm == "l2" else ["model", "method", "kind"]
    table = (summary.assign(model=_label(summary))
             .groupby(keys, sort=False, dropna=False)[radius_cols + ["acr", "seed"]]
             .agg({**{c: "mean" for c in radius_cols + ["acr"]}, "seed": "nunique"})
             .rename(columns={c: c.split("@")[1] for c in radius_cols} | {"acr": "ACR", "seed": "seeds"})
             .reset_index())
    return table


def envelope_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per method and certifier, the best certified accuracy over all its runs at each radius (Salman et al.'s
    "upper envelope" over a grid), mean over seeds first; `best` names the run behind each column (ties → the run
    with the higher clean accuracy)."""
    summary = _of_norm(summary, "l2")
    radius_cols = _radius_cols(summary)
    per_run = (summary.groupby(["method", "certifier", "run"], sort=False)[radius_cols].mean().reset_index())
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
    """Every smoothing certifier of a run side by side: certified accuracy at the radii, noisy samples and seconds
    per image, the path and dtype that computed them, and against CERTIFY on the same run: the share of its samples
    and the largest accuracy gap over the radii (mean over seeds)."""
    summary = _of_norm(summary, "l2")
    radius_cols = _radius_cols(summary)
    if summary.empty:
        return pd.DataFrame()
    summary = summary.assign(checkpoint=_checkpoints(summary))
    for col in ("samples_per_example", "certify_path", "certify_dtype"):
        if col not in summary:
            summary[col] = float("nan") if col == "samples_per_example" else ""
    table = (summary.groupby(["run", "checkpoint", "certifier"], sort=False)
             .agg(**{c: (c, "mean") for c in radius_cols}, samples_per_example=("samples_per_example", "mean"),
                  sec_per_example=("certify_sec_per_example", "mean"), path=("certify_path", "first"),
                  dtype=("certify_dtype", "first"), seeds=("seed", "nunique"))
             .reset_index())
    cohen = table[table["certifier"] == "cohen"].set_index(["run", "checkpoint"])
    share, gap = [], []
    for _, row in table.iterrows():
        key = (row["run"], row["checkpoint"])
        base = cohen.loc[key] if key in cohen.index else None
        share.append(row["samples_per_example"] / base["samples_per_example"] if base is not None else float("nan"))
        gap.append(max((abs(row[c] - base[c]) for c in radius_cols), default=float("nan"))
                   if base is not None else float("nan"))
    table["samples_vs_cohen"] = share
    table["max_acc_gap_vs_cohen"] = gap
    return table.rename(columns={c: c.split("@")[1] for c in radius_cols})


#: The paper's own timing columns of the timing table (metric in published.csv → column).
PAPER_TIMING = {"sec_per_epoch": "paper_sec_per_epoch", "epochs": "paper_epochs", "total_hours": "paper_total_hours"}


def timing_table(summary: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """sec/epoch, epochs, total hours and ACR per run (as MACER's Table 3; for ℓ∞ rows the mean radius, capped at the
    ε grid's end for attacks), with the device it was measured on. A run with a selected "best" checkpoint is timed once, on
    its last-epoch rows (training is the same run). Where a run names a published setting with a timing (MACER's
    Table 3, the ℓ∞-dist v2 README), the paper's sec/epoch, epochs, hours and hardware sit beside ours."""
    from .compare import published_refs, ref_label
    from .published import select

    summary = summary[_checkpoints(summary) == "last"]
    table = (summary.assign(model=_label(summary))
             .groupby(["model", "method"], sort=False)
             .agg(run=("run", "first"), sec_per_epoch=("train_sec_per_epoch", "mean"),
                  sec_per_epoch_with_eval=("train_eval_sec_per_epoch", "mean"), epochs=("epochs", "first"),
                  total_hours=("train_hours", "mean"), ACR=("acr", "mean"),
                  certify_sec_per_example=("certify_sec_per_example", "mean"), device=("device", "first"))
             .reset_index())
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


def _markdown(table: pd.DataFrame, floatfmt: str) -> str:
    header = "| " + " | ".join(map(str, table.columns)) + " |\n|" + "---|" * len(table.columns) + "\n"
    cells = table.apply(lambda col: col.map(lambda v: ("" if np.isnan(v) else format(v, floatfmt))
                                            if isinstance(v, float) else str(v)))
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
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}",
             r"\begin{tabular}{" + "l" * 2 + "r" * (len(cols) - 2) + "}", r"\toprule",
             " & ".join(str(c).replace("_", r"\_") for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(fmt(c, v) for c, v in zip(cols, row)) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [r"\par\smallskip\footnotesize " + _tex_escape(n) for n in notes]
    lines += [r"\end{table}", ""]
    return "\n".join(lines)


def _protocol(summary: pd.DataFrame) -> str:
    """The evaluation protocol(s) behind a table: subset, and n0, n, alpha for smoothing (one clause each)."""
    clauses = []
    for p in summary.drop_duplicates(["dataset", "examples", "subset", "n0", "n", "alpha"]).itertuples(index=False):
        clause = f"{p.dataset}: {p.examples} test images ({p.subset})"
        if pd.notna(p.n):
            clause += f", n0 = {int(p.n0)}, n = {int(p.n)}, alpha = {p.alpha}"
        clauses.append(clause)
    return "; ".join(dict.fromkeys(clauses))


def write_tables(summary: pd.DataFrame, tables_dir: str | Path, what: tuple[str, ...] = ("l2", "timing"),
                 published: pd.DataFrame | None = None) -> list[Path]:
    """`what`: "l2" (certified accuracy + envelope), "linf" (ℓ∞ certified and empirical accuracy), "timing",
    "published" (reproduced vs published; needs `published`, the table of methods.published)."""
    tables_dir = Path(tables_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tables = []
    if "l2" in what:
        l2 = _of_norm(summary, "l2")
        acc, protocol = accuracy_table(summary), _protocol(l2)
        radius_cols = [c for c in acc.columns if re.fullmatch(r"\d+\.\d+", str(c))]
        tables += [("certified_accuracy", l2, acc, radius_cols + ["ACR"],
                    f"Approximate certified accuracy at each l2 radius and ACR. {protocol}.", ".3f"),
                   ("envelope", l2, envelope_table(summary), radius_cols,
                    f"Upper envelope: the best run of each method at each l2 radius (as Salman et al.'s headline "
                    f"tables). {protocol}.", ".3f"),
                   ("certification_cost", l2, cost_table(summary), [],
                    f"Certification cost: every smoothing certifier of a run side by side, with its noisy samples "
                    f"and seconds per image, the path (fast / plain) and dtype of the base classifier, and, against "
                    f"CERTIFY on the same run, the share of its samples and the largest gap in certified accuracy "
                    f"over the radii. The adaptive certifier only decides the configured radii (its n is a "
                    f"maximum). {protocol}.", ".4g")]
    if "linf" in what:
        linf = _of_norm(summary, "linf")
        acc = accuracy_table(summary, "linf")
        tables.append(("linf_accuracy", linf, acc, [],  # no "best" in bold: certified and empirical don't compete
                       "Accuracy at each l-inf radius (pixel units; column 0.00 = clean accuracy). kind = certified: "
                       "a guarantee (l-inf-dist margin / interval bounds); kind = empirical: the accuracy under an "
                       "attack, an UPPER bound on robust accuracy, not a certificate. ACR = mean radius (for grid "
                       f"evaluators capped at the grid's largest eps). {_protocol(linf)}.", ".3f"))
    if "timing" in what:
        tables.append(("timing", summary, timing_table(summary, published),
                       [], f"Training cost per run, beside the paper's own timing and hardware where the run names "
                       f"a published setting (paper_*: as published; devices differ, so compare ratios between "
                       f"methods rather than seconds). {_protocol(summary)}.", ".4g"))
    if "published" in what:
        from .compare import caption as compare_caption, comparison_table

        dataset = summary["dataset"].iloc[0] if len(summary) else ""
        compared = comparison_table(summary, published)
        tables.append(("reproduced_vs_published", summary, compared, [], compare_caption(compared, dataset),
                       ".4g"))
    for name, rows, table, bold, caption, floatfmt in tables:
        _, notes = footnotes(rows)
        paths = [tables_dir / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
        table.to_csv(paths[0], index=False)
        paths[1].write_text(f"{caption}\n\n" + _markdown(table, floatfmt) + "".join(f"\n{n}\n" for n in notes))
        paths[2].write_text(_latex(table, bold, caption.replace("_", r"\_"), notes))
        written += paths
    return written


# ---------------------------------------------------------------- figure

def curves(summary: pd.DataFrame, radius_max: float, step: float = 0.01) -> pd.DataFrame:
    """Certified (or empirical) accuracy on a radius grid (step 0.01, as Cohen's analyze.py), per model, mean over
    seeds."""
    grid = np.round(np.arange(0.0, radius_max + step / 2, step), 10)
    parts = []
    for (label, row) in zip(_label(summary), summary.itertuples(index=False)):
        frame = read_tsv(row.certify_file)
        ok = frame["radius"].to_numpy()[frame["correct"].to_numpy() == 1]
        acc = (ok[None, :] >= grid[:, None]).sum(axis=1) / len(frame)
        if getattr(row, "norm", "l2") == "linf" and pd.notna(row.max_radius):
            acc = np.where(grid <= row.max_radius + 1e-12, acc, np.nan)  # past an eps grid's end: unknown, not 0
        parts.append(pd.DataFrame({"model": label, "run": row.run, "certifier": row.certifier,
                                   "checkpoint": getattr(row, "checkpoint", "last"), "method": row.method,
                                   "sigma": row.sigma, "seed": row.seed, "kind": getattr(row, "kind", "certified"),
                                   "radius": grid, "certified_accuracy": acc}))
    data = pd.concat(parts)
    return data.groupby(["model", "run", "certifier", "checkpoint", "method", "sigma", "kind", "radius"], sort=False,
                        dropna=False, as_index=False)["certified_accuracy"].mean()


def plot_certified_accuracy(summary: pd.DataFrame, out_stem: str | Path, radius_max: float, title: str = "",
                            norm: str = "l2", published: pd.DataFrame | None = None) -> list[Path]:
    """Accuracy vs radius, one line per run × certifier, in the papers' style; PNG and PDF. Colour: a shade of the
    method's hue (methods.figures). ℓ2: line style per method (MACER's figures). ℓ∞: certified curves solid,
    empirical (attack) curves dashed, never mixed up, and the runs' published points as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from .figures import LINESTYLES, overlay_linf_published, run_colors

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
        ax.plot(part["radius"], part["certified_accuracy"], color=palette[model], linewidth=2, linestyle=style,
                label=model + (" (empirical)" if empirical else ""))
    if norm == "l2":
        ax.set(xlim=(0, radius_max), ylim=(0, 1), xlabel=r"radius ($\ell_2$)", ylabel="certified accuracy")
    else:
        overlay_linf_published(ax, summary, published, palette)
        ax.set(xlim=(0, radius_max), ylim=(0, 1), xlabel=r"radius ($\ell_\infty$, pixels)",
               ylabel="accuracy: certified (solid), empirical (dashed)")
    ax.set_title(textwrap.fill(title or f"{summary['dataset'].iloc[0]}: certified accuracy vs radius", 60),
                 fontsize="medium")
    ax.legend(frameon=True, fontsize="small")
    fig.tight_layout()
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _published(path: str | Path | None) -> pd.DataFrame:
    from .published import PUBLISHED_CSV, load

    return load(path or PUBLISHED_CSV)


def report(summary_csv: str | Path, figures_dir: str | Path, tables_dir: str | Path, radius_max: float,
           title: str = "", what: tuple[str, ...] = ("l2", "timing"),
           published_csv: str | Path | None = None, sigmas=None, methods=None) -> list[Path]:
    """The figures and tables of `what`:
    "l2": certified_accuracy figure (every run), the certified_accuracy and envelope tables;
    "sigma": one figure per σ of `sigmas` (default all), every method with the published points (methods.figures);
    "sweep": one σ-sweep figure per method of `methods` (default all with two σ or more);
    "linf": linf_accuracy figure and table (`radius_max` is then the ℓ∞ axis limit);
    "timing": the timing table, beside the papers' own timings;
    "published": the reproduced-vs-published table (methods.compare).
    Published numbers come from `published_csv` (default workflow/resources/published.csv)."""
    from .figures import plot_per_sigma, plot_sigma_sweeps

    summary = pd.read_csv(summary_csv)
    published = _published(published_csv)
    l2 = _of_norm(summary, "l2")
    paths = []
    if "l2" in what:
        paths += plot_certified_accuracy(l2, Path(figures_dir) / "certified_accuracy", radius_max, title)
    if "sigma" in what:
        paths += plot_per_sigma(l2, published, figures_dir, radius_max, title, sigmas)
    if "sweep" in what:
        paths += plot_sigma_sweeps(l2, published, figures_dir, radius_max, title, methods)
    if "linf" in what:
        paths += plot_certified_accuracy(_of_norm(summary, "linf"), Path(figures_dir) / "linf_accuracy",
                                         radius_max, title, norm="linf", published=published)
    return paths + write_tables(summary, tables_dir, what, published)


def rebuild(results_dir: str | Path, figures_root: str | Path, radii: list[float], linf_radii: list[float],
            radius_max: float, linf_radius_max: float, title: str = "", notes: dict | None = None,
            published: dict | None = None, published_csv: str | Path | None = None) -> list[Path]:
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
            paths += report(summary_csv, figures_dir, tables_dir, radius_max, title, ("l2", "sigma", "sweep"),
                            published_csv)
        if "linf" in norms:
            paths += report(summary_csv, figures_dir, tables_dir, linf_radius_max, title, ("linf",), published_csv)
        paths += report(summary_csv, figures_dir, tables_dir, radius_max, title, ("timing", "published"),
                        published_csv)
    if not paths:
        raise FileNotFoundError(f"no results/<dataset>/<run>/seed<s>/certify/<certifier>.tsv files under "
                                f"{results_dir}: nothing to rebuild")
    return paths
