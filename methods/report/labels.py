"""How the report names and annotates a row of summary.csv: its label in tables and legends, and its footnotes.

A label is the run name, plus the certifier when a run has several, plus [best]/[last] when a run has both
checkpoints, plus footnote marks; the footnotes are each row's caveats (a method without official code, a
reconstructed certifier, a run's config note, a test-selected checkpoint), numbered once per table.
"""

from __future__ import annotations

import pandas as pd


def checkpoints(summary: pd.DataFrame) -> pd.Series:
    """ "last" for every row of a summary written before checkpoints were told apart."""
    return summary.get("checkpoint", pd.Series("last", index=summary.index)).fillna("last")


def run_labels(summary: pd.DataFrame) -> pd.Series:
    """Run name, plus the certifier when a run has several, plus "best"/"last" when a run has both checkpoints, plus
    footnote marks (see `footnotes`)."""
    several = summary.groupby("run")["certifier"].transform("nunique") > 1
    label = summary["run"].where(~several, summary["run"] + " (" + summary["certifier"] + ")")
    checkpoint = checkpoints(summary)
    both = checkpoint.groupby(summary["run"]).transform("nunique") > 1
    label = label.where(~both, label + " [" + checkpoint + "]")
    health = summary.get("train_health", pd.Series("", index=summary.index)).astype(object).fillna("").astype(str)
    label = label.where(~health.str.startswith("collapsed"), label + " (collapsed)")  # in every table and legend
    label = label.where(~is_published(summary), label + " (published, per example)")
    marks, _ = footnotes(summary)
    return label + marks


def is_published(summary: pd.DataFrame) -> pd.Series:
    """Rows of a paper's own per-example file (methods/report/imported.py), not a run of ours."""
    return summary.get("origin", pd.Series("", index=summary.index)).astype(object).fillna("").eq("published")


def ours(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of our own runs: what envelopes, claims and costs are made of."""
    return summary[~is_published(summary)]


def caveats(row) -> list[str]:
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
        out.append(
            f"{row['run']} [best]: the epoch with the highest {selected_by} (selected on test images, as the "
            f"paper's code does; see best_epoch in summary.csv)"
        )
    health = row.get("train_health", "")
    if isinstance(health, str) and health.startswith("collapsed"):
        out.append(f"{row['run']}: did not train ({health}): its certificates are a constant classifier's")
    precision = [f"{stage} in {dtype}" for stage, dtype in (("trained", row.get("train_dtype")),
                                                             ("certified", row.get("certify_dtype")))
                 if isinstance(dtype, str) and "bfloat16" in dtype]  # fmt: skip
    if precision:
        out.append(f"{row['run']}: {' and '.join(precision)}, not the papers' float32")
    return out


def footnotes(summary: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """(" [1,2]"-style marks per row, numbered footnote lines) for the caveats of the summary's rows."""
    texts: list[str] = []
    marks = []
    for _, row in summary.iterrows():
        numbers = []
        for caveat in caveats(row):
            if caveat not in texts:
                texts.append(caveat)
            numbers.append(texts.index(caveat) + 1)
        marks.append(f" [{','.join(map(str, numbers))}]" if numbers else "")
    return pd.Series(marks, index=summary.index, dtype=object), [f"[{i}] {t}" for i, t in enumerate(texts, 1)]


def radius_columns(summary: pd.DataFrame) -> list[str]:
    """The accuracy columns these rows fill (the other norm's radii stay empty)."""
    return [c for c in summary.columns if c.startswith("certified_acc@") and summary[c].notna().any()]


def of_norm(summary: pd.DataFrame, norm: str) -> pd.DataFrame:
    return summary[summary.get("norm", pd.Series("l2", index=summary.index)) == norm]
