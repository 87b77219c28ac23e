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
    from rerank_ray.tune.config import load_study
    from rerank_ray.tune.plan import plan_study

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
