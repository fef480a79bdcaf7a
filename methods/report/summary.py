"""summary.csv: one row per run × certifier × checkpoint × seed, from the per-example TSVs and their sidecars alone.

Metrics (../shared/METHODS.md §0): approximate certified accuracy at r = mean(correct ∧ radius ≥ r) over the
certified subset; ACR = mean(radius · correct), abstentions and wrong predictions counting 0. Several seeds of a run
are averaged in the tables and figure; summary.csv keeps one row per run × certifier × seed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from ..certify.registry import CERTIFIERS
from ..core.errors import InputError
from ..registry import get_method

TSV_PATH = re.compile(
    r"(?P<dataset>[^/]+)/(?P<run>[^/]+)/seed(?P<seed>\d+)/certify(?P<best>-best)?/"
    r"(?P<certifier>[^/]+)\.tsv$"
)


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
        return {
            "train_sec_per_epoch": float("nan"),
            "train_eval_sec_per_epoch": float("nan"),
            "epochs": float("nan"),
            "train_hours": float("nan"),
            "train_dtype": "",
        }
    log = pd.read_csv(run_dir / "train_log.tsv", sep="\t")
    dtypes = sorted(set(log["dtype"].dropna().astype(str))) if "dtype" in log else ["float32"]  # before the column
    passes = [pd.to_numeric(log[c], errors="coerce") for c in ("eval_seconds", "select_seconds") if c in log]
    passes = [p for p in passes if p.notna().all()]
    with_eval = float((log["train_seconds"] + sum(passes)).mean()) if passes else float("nan")
    return {
        "train_sec_per_epoch": float(log["train_seconds"].mean()),
        "train_eval_sec_per_epoch": with_eval,
        "epochs": int(len(log)),
        "train_hours": float(log["train_seconds"].sum()) / 3600,
        "train_dtype": "/".join(dtypes),  # float32, or bfloat16 where the fast path trained in bf16 autocast
    }


NUMERIC = ("idx", "label", "predict", "radius", "correct", "time")


def read_checked(tsv: Path) -> tuple[pd.DataFrame, dict]:
    """A per-example TSV and its sidecar, refused (InputError naming the file and the row) where the rows contradict
    themselves or the sidecar: a cell that is not a number, an index twice or missing from the sidecar's subset, a
    negative radius or one above the certifier's largest, `correct` not `predict == label`."""
    sidecar = tsv.with_suffix(".json")
    if not sidecar.exists():
        raise InputError(f"{tsv}: its sidecar {sidecar.name} is missing (copy it with the TSV, or re-certify)")
    try:
        meta = json.loads(sidecar.read_text())
        frame = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{tsv if 'frame' not in locals() else sidecar}: unreadable ({exc})") from None
    if tuple(frame.columns[: len(NUMERIC)]) != NUMERIC:
        raise InputError(f"{tsv}: expected the columns {' '.join(NUMERIC)} first, found {' '.join(frame.columns)}")
    for column in NUMERIC:
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna()
        if bad.any():
            row = int(bad.idxmax())
            raise InputError(f"{tsv}: data row {row + 1}, column {column}: not a number: {frame[column][row]!r}")
        frame[column] = values
    for column in [c for c in frame.columns if c not in NUMERIC]:  # numbers where every non-empty cell is one
        numbers = pd.to_numeric(frame[column], errors="coerce")
        empty = frame[column].astype(str).str.strip().eq("")
        frame[column] = numbers if (numbers.notna() | empty).all() else frame[column].where(~empty, None)

    def fail(row: int, why: str):
        raise InputError(f"{tsv}: data row {row + 1} (idx {int(frame['idx'][row])}): {why}")

    duplicated = frame["idx"].duplicated()
    if duplicated.any():
        fail(int(duplicated.idxmax()), "this index appears twice")
    sub = meta.get("subset", {})
    if {"start", "skip", "examples"} <= set(sub):
        expected = [sub["start"] + k * sub["skip"] for k in range(sub["examples"])]
        if sorted(frame["idx"].astype(int)) != expected:
            missing = sorted(set(expected) - set(frame["idx"].astype(int)))
            extra = sorted(set(frame["idx"].astype(int)) - set(expected))
            raise InputError(f"{tsv}: its indices are not the sidecar's subset (start {sub['start']}, skip "
                             f"{sub['skip']}, {sub['examples']} images): missing {missing[:5]}, unexpected "
                             f"{extra[:5]}")  # fmt: skip
    negative = frame["radius"] < 0
    if negative.any():
        fail(int(negative.idxmax()), f"negative radius {frame['radius'][negative.idxmax()]}")
    cliff = meta.get("max_radius")
    if cliff is not None:
        above = frame["radius"] > float(cliff) + 1e-9
        if above.any():
            fail(int(above.idxmax()), f"radius {frame['radius'][above.idxmax()]} above the certifier's largest "
                                      f"possible ({cliff})")  # fmt: skip
    wrong = frame["correct"] != (frame["predict"] == frame["label"]).astype(int)
    if wrong.any():
        fail(int(wrong.idxmax()), "`correct` disagrees with predict == label")
    return frame, meta


def check_provenance(tsv: Path, meta: dict, run_dir: Path) -> None:
    """The TSV certified the run's current model: the sidecar's model sha256 is run.json's for that file, and the
    model was trained for this run (method, run name, hyper-parameters). A TSV left over from an older model, or a
    model copied in from another run, is refused rather than summarized as this run's."""
    run_json = run_dir / "run.json"
    if not run_json.exists():  # results copied without their run.json: nothing to check against
        return
    run = json.loads(run_json.read_text())
    spec, info = run.get("spec", {}), meta.get("model_info", {})
    for key in ("method", "run"):
        if key in spec and key in info and spec[key] != info[key]:
            raise InputError(f"{tsv}: certified a model of {key} {info[key]!r}, but run.json says {spec[key]!r}")
    if "hparams" in spec and "hparams" in info and spec["hparams"] != info["hparams"]:
        raise InputError(f"{tsv}: certified a model with other hyper-parameters than run.json's: re-certify")
    models, sha = run.get("models", {}), meta.get("model_sha256")
    name = Path(meta.get("model", "")).name
    if sha and name in models and models[name] != sha:
        raise InputError(f"{tsv}: certified an earlier {name} (sha256 {sha[:12]}…) than the run's current one "
                         f"({models[name][:12]}…): re-certify")  # fmt: skip


def summarize(
    tsv_files: list[str | Path],
    radii: list[float],
    out: str | Path,
    notes: dict[str, str] | None = None,
    linf_radii: list[float] | None = None,
    published: dict[str, list[dict]] | None = None,
) -> pd.DataFrame:
    """One row per per-example TSV (run × certifier × seed × checkpoint); paths must be
    <dataset>/<run>/seed<s>/certify/<c>.tsv (the last epoch) or .../certify-best/<c>.tsv (the epoch picked by
    train.select_best; `checkpoint` = "best", `selected_by` says how and `best_epoch` which).

    Accuracy columns are at `radii` for ℓ2 rows and at `linf_radii` (pixel units) for ℓ∞ rows; a row leaves the
    other norm's columns empty. For ℓ∞ rows `kind` says whether the radius is certified or empirical.

    `notes` maps run names to the config's caveats (`note`), which the tables print as footnotes beside the
    method's own provenance (`SOURCE`) and the certifier's. `published` maps run names to the published settings
    they reproduce (config `published`), kept as JSON in the `published` column for methods.report.compare.
    """
    notes, published = notes or {}, published or {}
    rows = []
    for tsv in map(Path, tsv_files):
        match = TSV_PATH.search(tsv.as_posix())
        if not match:
            raise ValueError(f"{tsv}: not a results/<dataset>/<run>/seed<s>/certify[-best]/<certifier>.tsv path")
        frame, meta = read_checked(tsv)
        info = meta["model_info"]
        run_dir = tsv.parent.parent
        check_provenance(tsv, meta, run_dir)
        row = {
            "dataset": match["dataset"],
            "run": match["run"],
            "method": info["method"],
            "seed": int(match["seed"]),
            "certifier": match["certifier"],
            "checkpoint": "best" if match["best"] else "last",
            "norm": CERTIFIERS[match["certifier"]].norm,
            "kind": CERTIFIERS[match["certifier"]].kind,
            "sigma": meta.get("sigma"),
            "clean_acc": float(frame["correct"].mean()),
            "acr": average_certified_radius(frame),
        }
        norm_radii = linf_radii if row["norm"] == "linf" and linf_radii else radii
        row.update({radius_column(r): certified_accuracy(frame, r) for r in norm_radii})
        row.update(_train_log_stats(run_dir))
        row.update(
            {
                "certify_sec_per_example": float(frame["time"].mean()),
                "samples_per_example": float(frame["samples"].mean()) if "samples" in frame else float("nan"),
                # the spread of the draws per image (the sequential certifiers' cost is skewed: most images stop
                # early, a few run to the cap)
                "samples_median": float(frame["samples"].median()) if "samples" in frame else float("nan"),
                "samples_p90": float(frame["samples"].quantile(0.9)) if "samples" in frame else float("nan"),
                "certify_path": "/".join(sorted({str(p) for p in frame["path"].dropna()})) if "path" in frame else "",
                "certify_dtype": "/".join(sorted({str(d) for d in frame["dtype"].dropna()}))
                if "dtype" in frame
                else "",
                "device": info["device"],
                "certify_device": meta["provenance"]["device_name"],
                "examples": len(frame),
                "subset": "start {start}, skip {skip}, count {count}".format(**meta["subset"]),
                "n0": meta.get("n0"),
                "n": meta.get("n"),
                "alpha": meta.get("alpha"),
                "max_radius": meta.get("max_radius"),
                "certify_file": tsv.as_posix(),
                "source": get_method(info["method"]).SOURCE,
                "certifier_note": CERTIFIERS[match["certifier"]].note,
                "note": notes.get(match["run"], ""),
                "best_epoch": info.get("best_epoch"),
                "selected_by": info.get("selected_by", ""),
                "train_health": info.get("health", ""),
                "origin": "published"
                if meta.get("published")
                else "",  # a paper's own per-example file  # "collapsed: ..." where training never left chance
                "published": json.dumps(published[match["run"]]) if published.get(match["run"]) else "",
            }
        )
        rows.append(row)
    summary = pd.DataFrame(rows).sort_values(["dataset", "method", "sigma", "run", "certifier", "checkpoint", "seed"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out, index=False)
    return summary
