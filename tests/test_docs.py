"""The documentation is tested: its Python examples run, its error messages are real, and the site builds.

- Every ```python block of the site's pages (and the README) runs, page by page in order, in a
  fresh folder, with ``generations`` and ``steps_per_generation`` cut to a tiny budget.
- Every ```console block of the troubleshooting page is a real command: it runs and must exit with
  code 2 and print the lines shown (``...`` stands for any text), creating nothing.
- The site builds with ``-W --keep-going -n`` (warnings are errors, every cross-reference resolves);
  every option ``python -m evo_mpi.run --help`` prints appears in the built CLI reference; every
  internal link of the built site and of the README resolves.
"""

from __future__ import annotations

import html
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: What the doc tests cut each budget keyword to: 2 generations of one PPO rollout (8 envs x 256 steps).
TINY = {"generations": 2, "steps_per_generation": 2048}
#: Files a page's Python blocks must leave behind (relative to the folder they ran in).
EXPECTED_FILES = {
    "guide/python-api.md": ["runs/api-demo/best.zip", "runs/api-demo/champion.json"],
    "README.md": ["runs/readme-demo/best.zip"],
}


def pages() -> list[Path]:
    """The site's Markdown sources (not the studies' data or the build) and the README."""
    found = [p for p in DOCS.rglob("*.md") if not ({"_build", "data"} & set(p.relative_to(DOCS).parts))]
    return sorted(found) + [ROOT / "README.md"]


def fenced(path: Path, language: str) -> list[str]:
    """The bodies of a page's fenced blocks in ``language``, in order."""
    pattern = re.compile(r"^```" + re.escape(language) + r"[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
    return [m.group(1) for m in pattern.finditer(path.read_text(encoding="utf-8"))]


def name(path: Path) -> str:
    return path.relative_to(DOCS).as_posix() if path.is_relative_to(DOCS) else path.name


def tiny(code: str) -> str:
    """The block with each budget keyword argument cut to :data:`TINY`."""
    for key, value in TINY.items():
        code = re.sub(rf"\b{key}=\d+", f"{key}={value}", code)
    return code


PYTHON_PAGES = [p for p in pages() if fenced(p, "python")]


def test_the_python_examples_are_found():
    assert [name(p) for p in PYTHON_PAGES] == ["guide/python-api.md", "README.md"]
    assert all("evo_mpi.train(" in fenced(page, "python")[0] for page in PYTHON_PAGES)


@pytest.fixture(scope="module")
def ran_examples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[str]]]:
    """Each page's Python blocks run in order in a fresh folder: (folder, failures) per page."""
    ran = {}
    for page in PYTHON_PAGES:
        folder, failures = tmp_path_factory.mktemp(name(page).replace("/", "-")), []
        for i, block in enumerate(fenced(page, "python")):
            code = tiny(block)
            if "evo_mpi.train(" in block and code == block:  # uncut, the test would take hours
                failures.append(f"block {i}: no budget keyword to cut")
                break
            proc = subprocess.run(
                [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=600, check=False
            )
            if proc.returncode != 0:
                failures.append(f"block {i} failed:\n{proc.stdout}\n{proc.stderr}")
                break
        ran[name(page)] = (folder, failures)
    return ran


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=name)
def test_python_examples_run(page: Path, ran_examples: dict[str, tuple[Path, list[str]]]):
    folder, failures = ran_examples[name(page)]
    assert not failures, f"{name(page)}: " + "\n".join(failures)
    for rel in EXPECTED_FILES.get(name(page), []):
        assert (folder / rel).is_file(), f"{name(page)}: its examples wrote no {rel}"


def documented_fields(section: str) -> set[str]:
    """The field names in the tables of one section of the outputs page."""
    text = (DOCS / "outputs.md").read_text(encoding="utf-8")
    body = text.split(f"\n## `{section}`\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", body, re.M))


def test_every_output_field_is_documented(ran_examples: dict[str, tuple[Path, list[str]]]):
    run = ran_examples["guide/python-api.md"][0] / "runs" / "api-demo"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    lineage = [json.loads(line) for line in (run / "lineage.jsonl").read_text().splitlines()]
    champion = json.loads((run / "champion.json").read_text())
    assert history and lineage, "the example run must exploit for its lineage to be checked"
    for section, records in (("history.jsonl", history), ("lineage.jsonl", lineage), ("champion.json", [champion])):
        fields = documented_fields(section)
        undocumented = {key for record in records for key in record} - fields
        assert not undocumented, f"{section}: fields a run writes that docs/outputs.md does not list: {undocumented}"
    always = {"generation", "member", "rank", "timesteps", "fitness", "hparams", "parent", "returns"}
    assert always <= documented_fields("history.jsonl") and all(always <= set(r) for r in history)


def console_examples() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of every ```console block of the troubleshooting page."""
    examples = []
    for block in fenced(DOCS / "troubleshooting.md", "console"):
        first, *expected = block.rstrip("\n").split("\n")
        assert first.startswith("$ python -m evo_mpi.run"), first
        examples.append((first[2:], expected))
    return examples


def line_pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def test_every_troubleshooting_example_is_tested():
    commands = [command for command, _ in console_examples()]
    assert len(commands) >= 12 and len(set(commands)) == len(commands)


@pytest.mark.parametrize(("command", "expected"), console_examples(), ids=[c for c, _ in console_examples()])
def test_troubleshooting_messages_are_real(command: str, expected: list[str], tmp_path: Path):
    argv = shlex.split(command)
    assert argv[0] == "python"
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )
    output = (proc.stdout + proc.stderr).rstrip("\n").split("\n")
    assert proc.returncode == 2, f"{command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert len(output) == len(expected), f"{command} printed:\n" + "\n".join(output)
    for got, want in zip(output, expected, strict=True):
        assert line_pattern(want).fullmatch(got), f"{command}:\n  printed  {got}\n  expected {want}"
    assert not list(tmp_path.iterdir()), f"{command} created {list(tmp_path.iterdir())}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built the way .ci/run builds it: warnings are errors, nitpicky."""
    pytest.importorskip("sphinx", reason="the docs tools are not installed: pip install -r docs/requirements.txt")
    pytest.importorskip("sphinxarg", reason="the docs tools are not installed: pip install -r docs/requirements.txt")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stdout + proc.stderr
    return out


def help_options() -> list[str]:
    """Every option string --help prints (wide, so that argparse wraps no option name)."""
    proc = subprocess.run(
        [sys.executable, "-m", "evo_mpi.run", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "COLUMNS": "10000"},
    )
    return sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w-])", proc.stdout)))


def test_the_cli_reference_lists_every_option(site: Path):
    options = help_options()
    assert {"--env-id", "--generations", "--resume", "--no-normalize"} <= set(options)
    text = html.unescape((site / "reference" / "cli.html").read_text(encoding="utf-8"))
    missing = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert not missing, f"options --help prints that the CLI reference lacks: {missing}"


def test_internal_links_of_the_site_resolve(site: Path):
    broken, checked = [], 0
    for page in site.rglob("*.html"):
        if "_modules" in page.parts or page.name in ("genindex.html", "search.html", "py-modindex.html"):
            continue
        text = page.read_text(encoding="utf-8")
        for href in re.findall(r'href="([^"]+)"', text):
            href = html.unescape(href)
            if re.match(r"^[a-z]+:", href) or href.startswith("_static") or "/_static/" in href:
                continue
            path, _, fragment = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            checked += 1
            if not target.is_file():
                broken.append(f"{page.relative_to(site)}: {href}")
            elif fragment and f'id="{fragment}"' not in target.read_text(encoding="utf-8"):
                broken.append(f"{page.relative_to(site)}: {href} (no such anchor)")
    assert checked > 200, checked
    assert not broken, "\n".join(broken)


def test_the_readme_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"^[a-z]+:", t)]
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link.partition("#")[0]).exists()]
    assert not missing, missing


def test_the_readme_is_a_landing_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, len(lines)
    text = "\n".join(lines)
    install_run = (
        'python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0" -e ".[mpich]" && '
        ".venv/bin/mpiexec -n 2 .venv/bin/python -m evo_mpi.run --agents-per-rank 2"
    )
    test_command = (
        'python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0" -e ".[mpich,test]" && '
        ".venv/bin/python -m pytest -q"
    )
    assert install_run in text and test_command in text
    assert "python -m sphinx -W --keep-going -n -b html docs docs/_build/html" in text
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci  # .ci/run runs the README's test command


def test_the_docs_requirements_are_the_docs_extra():
    """docs/requirements.txt (what .ci/run and the README install) pins exactly pyproject's ``docs`` extra."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    lines = (DOCS / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pins = [line.replace(" ", "") for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert sorted(pins) == sorted(req.replace(" ", "") for req in extra["docs"])


def test_the_docs_build_command_is_the_ci_one():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "-m sphinx -W --keep-going -n -b html docs docs/_build/html" in ci
    assert os.path.isfile(DOCS / "conf.py")
