"""The papers' own per-example files, imported beside our runs: reference curves, and an image-by-image comparison.

    python -m methods import-tsv FILE --dataset cifar10 --method cohen --sigma 0.25 --n 100000 --alpha 0.001 \\
        --source "locuslab/smoothing data/certify/cifar10/resnet110/noise_0.25/test/sigma_0.25" \\
        --run cohen-0.25-published [--compare-with cohen-0.25] [--start 0 --skip 20 --count 500]

Cohen's and Salman's repositories (and later re-implementations) publish `idx label predict radius correct time`
files. What they really contain, and what the import does with it:
- `time` as seconds or as `H:MM:SS.ffffff` (Cohen's `str(timedelta)`): converted to seconds;
- a radius kept where `correct` is 0 (the reference prints the radius before checking the label): zeroed, this
  harness's convention (radius 0 when wrong or abstaining; ACR multiplies by `correct` either way), the count said;
- radii rounded to 3 significant digits: kept as printed, and the sidecar says so (certified accuracy at a radius
  within rounding of a printed value can differ by an image);
- a file that stops before the end of its subset: the rows present are imported, the sidecar records how many of the
  subset's images are missing;
- no counts, no samples: those columns stay empty.
The result is results/<dataset>/<run>/seed0/certify/<certifier>.{tsv,json} with `"published": true` in the sidecar,
so summarize, the tables and the figures treat it as a run labelled "(published, per example)". `--compare-with RUN`
links it to our runs: the reproduced-vs-published table then compares them image by image where the subsets overlap.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd

from ..core.errors import InputError
from ..core.io import atomic_write_text, write_json
from ..core.tsv import read_tsv, tsv_text
from .claims import paired_interval

_CLOCK = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)$")


def seconds(value) -> float:
    """A `time` cell as seconds: a number, or H:MM:SS[.ffffff] (with an optional "N day(s), " prefix)."""
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _CLOCK.match(text)
    if not match:
        raise ValueError(f"not seconds nor H:MM:SS: {text!r}")
    days, hours, minutes, secs = match.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)


def import_tsv(path, results: str | Path, dataset: str, run: str, method: str, certifier: str, sigma: float | None,
               n: int | None, alpha: float | None, source: str, start: int = 0, skip: int = 1,
               count: int | None = None, compare_with: list[str] = (), n0: int | None = 100) -> Path:  # fmt: skip
    """Import one published per-example file (see the module docstring); returns the TSV written."""
    path = Path(path)
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"{path}: not a readable per-example file ({exc})") from None
    wanted = ("idx", "label", "predict", "radius", "correct", "time")
    if tuple(raw.columns[:6]) != wanted:
        raise InputError(f"{path}: expected the columns {' '.join(wanted)}, found {' '.join(raw.columns)}")
    rows, zeroed = [], 0
    for i, cell in raw.iterrows():
        try:
            idx, label, predict, correct = (int(cell[c]) for c in ("idx", "label", "predict", "correct"))
            radius, time = float(cell["radius"]), seconds(cell["time"])
        except ValueError as exc:
            raise InputError(f"{path}: data row {i + 1}: {exc}") from None
        if correct != int(predict == label):
            raise InputError(f"{path}: data row {i + 1}: correct = {correct} but predict {predict}, label {label}")
        if not correct and radius != 0:
            zeroed += 1
            radius = 0.0
        rows.append({"idx": idx, "label": label, "predict": predict, "radius": repr(radius), "correct": correct,
                     "time": repr(time), "path": "published", "dtype": "", "samples": ""})  # fmt: skip
    expected = list(range(start, start + skip * (count if count is not None else len(rows)), skip))
    present = [r["idx"] for r in rows]
    if present != expected[: len(present)]:
        raise InputError(f"{path}: its indices are not start {start}, every {skip} (first mismatch at row "
                         f"{next(i for i, (a, b) in enumerate(zip(present, expected)) if a != b) + 1})")  # fmt: skip
    missing = len(expected) - len(present)
    out = Path(results) / dataset / run / "seed0" / "certify" / f"{certifier}.tsv"
    atomic_write_text(out, tsv_text(rows))
    write_json(out.with_suffix(".json"), {
        "certifier": certifier, "norm": "l2", "kind": "certified", "sigma": sigma, "n0": n0, "n": n, "alpha": alpha,
        "max_radius": None, "published": True, "source": source, "imported_from": str(path),
        "subset": {"start": start, "skip": skip, "count": count, "examples": len(rows)},
        "missing_rows": missing, "radii_zeroed_where_wrong": zeroed,
        "note": "published per-example file: radii as printed (often 3 significant digits), no counts"
                + (f"; {missing} of the subset's {len(expected)} images missing (file truncated)" if missing else ""),
        "compare_with": list(compare_with),
        "model_info": {"method": method, "device": "published (not measured here)",
                       "hparams": {"sigma": sigma} if sigma is not None else {}},
        "provenance": {"device_name": "published", "source": source},
        "path": "published", "dtype": ""})  # fmt: skip
    return out


def image_by_image(summary: pd.DataFrame, radii: list[float], level: float = 0.95) -> pd.DataFrame:
    """Our runs against the published files linked to them (`--compare-with`), over the images both certified: each
    side's certified accuracy at every radius and ACR, the paired difference (ours − published) with a bootstrap
    interval over the shared images, and how often the predictions agree."""
    rows = []
    published = [r for r in summary.itertuples(index=False) if _meta(r.certify_file).get("published")]
    for pub in published:
        meta = _meta(pub.certify_file)
        theirs = read_tsv(pub.certify_file).set_index("idx")
        for ours in summary[summary["run"].isin(meta.get("compare_with", []))
                            & (summary["certifier"] == pub.certifier)].itertuples(index=False):  # fmt: skip
            mine = read_tsv(ours.certify_file).set_index("idx")
            shared = mine.index.intersection(theirs.index)
            if len(shared) == 0:
                continue
            a, b = mine.loc[shared], theirs.loc[shared]
            agree = float((a["predict"] == b["predict"]).mean())
            for metric, radius in [("certified_accuracy", r) for r in radii] + [("acr", math.nan)]:
                if metric == "acr":
                    x, y = (a["radius"] * a["correct"]).to_numpy(), (b["radius"] * b["correct"]).to_numpy()
                else:
                    x = ((a["correct"] == 1) & (a["radius"] >= radius)).to_numpy(float)
                    y = ((b["correct"] == 1) & (b["radius"] >= radius)).to_numpy(float)
                low, high = paired_interval(x - y, level)
                rows.append({"run": ours.run, "seed": ours.seed, "published_file": pub.run,
                             "source": meta.get("source", ""), "certifier": pub.certifier, "metric": metric,
                             "radius": radius, "images": len(shared), "reproduced": float(x.mean()),
                             "published": float(y.mean()), "difference": float((x - y).mean()), "ci_low": low,
                             "ci_high": high, "prediction_agreement": agree,
                             "outside": "yes" if not low <= 0 <= high else "",
                             "note": meta.get("note", "")})  # fmt: skip
    return pd.DataFrame(rows, columns=["run", "seed", "published_file", "source", "certifier", "metric", "radius",
                                       "images", "reproduced", "published", "difference", "ci_low", "ci_high",
                                       "prediction_agreement", "outside", "note"])  # fmt: skip


def _meta(certify_file) -> dict:
    return json.loads(Path(certify_file).with_suffix(".json").read_text())
