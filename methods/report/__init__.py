"""The report stage: summary.csv from the per-example files (summary), the tables (tables, compare: reproduced vs
published; published: the papers' numbers as data) and figures (figures), labelled and footnoted alike (labels);
`build` runs them for one summary, or rebuilds everything from results/ alone.

    python -m methods summarize ... ; python -m methods report ... ; python -m methods rebuild ...
Reads results (and the certifier and method registries for what a row means); never imports the train stage.
"""
