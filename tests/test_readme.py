"""The README's two commands are what CI and users run: keep .ci/run on the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_the_two_commands():
    main, tests = readme_commands()
    assert "snakemake --cores 2 &&" in main and main.endswith("snakemake --report report.html")
    assert "pip install -e ." in main
    assert tests.endswith("python -m pytest") and 'pip install -e ".[test]"' in tests


def test_ci_runs_the_readme_test_command():
    _, tests = readme_commands()
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert tests in lines
    assert "set -euo pipefail" in lines  # a failing test (or pytest's exit 5, no tests) fails CI


def test_the_main_commands_report_step_has_its_dependency_declared():
    """`snakemake --report` needs pygments; the test extra pulls it in through pytest, so only the declared
    dependencies of a plain `pip install -e .` show whether the README's main command can finish."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower() for d in deps}
    assert "snakemake" in names and "pygments" in names


def test_the_single_target_example_runs_as_written(tmp_path):
    """The README's example of asking for one target: the target before --configfile (which takes several values, so
    a target after it would be read as a second config file), dry-run from another directory."""
    import shlex
    import subprocess
    import sys

    text = (REPO / "README.md").read_text()
    match = re.search(r"`(snakemake results/\S+ --configfile config/\S+\.yaml)`", text)
    assert match, "the README shows no single-target example"
    words = shlex.split(match.group(1))
    target, config = words[1], words[words.index("--configfile") + 1]
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", target, "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--configfile", str(REPO / config)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "certify" in out.stdout and "train" in out.stdout
