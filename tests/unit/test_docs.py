"""The README is a user guide that stays short and true; every relative link in it and in
docs/ resolves; its example study loads and plans."""

from __future__ import annotations

import re

import pytest
import yaml

from rerank_ray.config import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    links = [m.group(1) for m in LINK.finditer(text)]
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")]


def test_links_are_found_and_urls_and_anchors_are_skipped():
    text = "[a](docs/X.md) [b](https://x.org) [c](#top) [d](../y/z.png#part) ![e](img.png)"
    assert relative_links(text) == ["docs/X.md", "../y/z.png#part", "img.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(PROJECT_ROOT)))
def test_every_relative_link_resolves(page):
    broken = [
        link for link in relative_links(page.read_text()) if not (page.parent / link.split("#")[0]).exists()
    ]
    assert not broken, f"{page.relative_to(PROJECT_ROOT)}: links to missing files {broken}"


def test_the_readme_reads_in_five_minutes():
    lines = (PROJECT_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/"


def test_the_readme_study_loads_and_plans(tmp_path):
    from rerank_ray.study.config import load_study
    from rerank_ray.study.plan import plan_study

    readme = (PROJECT_ROOT / "README.md").read_text()
    block = readme[readme.index("## Your own study") :]
    spec = re.search(r"```yaml\n(.*?)```", block, re.S).group(1)
    path = tmp_path / "my-study.yaml"
    path.write_text(spec)
    cfg = load_study([path])
    plans = plan_study(cfg)
    assert yaml.safe_load(spec)["name"] == cfg.name
    assert sorted(p.name for p in plans) == [
        "contrastive+minilm-l6+s0",
        "contrastive+minilm-l6+s1",
        "distillation+minilm-l6+bi-minilm+s0",
        "distillation+minilm-l6+bi-minilm+s1",
    ]


# Code whose comments used to carry dated measurements: the measurements live in
# docs/BENCHMARKS.md, the comments say what the constant is and point there.
MEASURED_IN_COMMENTS = (
    "rerank_ray/study/forecast.py",
    "rerank_ray/teacher/config.py",
    "rerank_ray/teacher/score.py",
)
BENCHMARKS_HEADING = "## Measurements behind code constants"
# A date, a rate, or a timing such as "~13 s" / "15 s of 125 s": figures that go stale.
STALE = re.compile(
    r"\b20\d\d-\d\d-\d\d\b|\d[\d.,]*\s*(pairs/s|s/pair)|~\s?\d+(\.\d+)?\s?(s|min|minutes)\b|\d+ s of \d+ s"
)


def comments_and_docstrings(source: str) -> list[str]:
    import ast
    import io
    import tokenize

    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    texts = [tok.string for tok in tokens if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            texts.append(ast.get_docstring(node) or "")
    return texts


@pytest.mark.parametrize("path", MEASURED_IN_COMMENTS)
def test_code_comments_point_to_the_benchmarks_page_instead_of_carrying_measurements(path):
    source = (PROJECT_ROOT / path).read_text()
    stale = [m.group(0) for text in comments_and_docstrings(source) for m in STALE.finditer(text)]
    assert not stale, f"{path}: measurements in comments {stale}; move them to docs/BENCHMARKS.md"
    assert "docs/BENCHMARKS.md" in source


def test_the_benchmarks_page_holds_the_measurements_behind_code_constants():
    from rerank_ray.teacher.config import ScoringConfig
    from rerank_ray.teacher.score import BLOCKS_PER_ACTOR

    page = (PROJECT_ROOT / "docs" / "BENCHMARKS.md").read_text()
    assert BENCHMARKS_HEADING in page
    section = page.split(BENCHMARKS_HEADING, 1)[1]
    # The constants keep the values the measurements were taken for.
    assert ScoringConfig().pool_min_pairs == 20_000 and "`scoring.pool_min_pairs` = 20,000" in section
    assert BLOCKS_PER_ACTOR == 8 and "`BLOCKS_PER_ACTOR` = 8" in section
    assert "3.5 to 4.3" in section  # the forecast's shared-CPU trials


def test_no_comment_or_docstring_in_the_package_carries_a_measurement():
    # The three files above, and every other: a speed ratio ("1.9x faster"), a rate or a timing
    # in the package goes stale silently; bench/ measures it and docs/BENCHMARKS.md states it.
    ratio = re.compile(r"\b\d+(\.\d+)?x\b")
    found = [
        f"{path.relative_to(PROJECT_ROOT)}: {m.group(0)}"
        for path in sorted((PROJECT_ROOT / "rerank_ray").rglob("*.py"))
        for text in comments_and_docstrings(path.read_text())
        for pattern in (STALE, ratio)
        for m in pattern.finditer(text)
    ]
    assert not found, f"measurements in comments {found}; move them to docs/BENCHMARKS.md"
