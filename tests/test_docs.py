"""The README and the pages it links to: the quick start CI runs, a short README, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "web" / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def quick_start(readme: str) -> tuple[int, list[str]]:
    """The README's first shell block: the line it ends on and its commands (comment lines left out)."""
    start = readme.index("```bash\n")
    end = readme.index("```", start + 7)
    commands = [line for line in readme[start + 8 : end].splitlines() if line.strip() and not line.startswith("#")]
    return readme[:end].count("\n") + 1, commands


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub makes for a page's headings (code fences skipped, repeated headings numbered)."""
    seen: dict[str, int] = {}
    found = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1)).replace("`", "").replace("*", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def test_the_readme_quick_start_is_on_the_first_screen_and_is_what_ci_runs():
    readme = README.read_text(encoding="utf-8")
    last_line, commands = quick_start(readme)
    assert last_line <= 30
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -r requirements-dev.txt",
        ".venv/bin/python scripts/demo.py",
        ".venv/bin/python -m pytest -q -n 8 --dist worksteal",
    ]
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line in commands]
    assert ci == commands  # every command, in the README's order


def test_the_readme_stays_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 160, f"README.md has {len(lines)} lines; move detail to a page in docs/ and link it"


def test_every_relative_link_and_anchor_in_the_docs_exists():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_anchors_are_made_as_github_makes_them():
    page = "# What happens when…\n## I get fewer images than `max_images`\n```\n# not a heading\n```\n"
    page += "## I'm out of credit (429, 5xx)\n## Limits\n## Limits\n"
    assert anchors(page) == {"what-happens-when", "i-get-fewer-images-than-max_images", "im-out-of-credit-429-5xx", "limits", "limits-1"}


def test_the_library_s_imports_run_the_one_way_contributing_md_gives():
    """Each module of api/ imports only modules after it in the Layout's order (type-only imports included), so no
    import cycle can come back unnoticed; a new module must be placed in that order."""
    import ast

    layout = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    listed = re.search(r"imports only modules after it in this order[^:]*:(.*?)The invariants", layout, re.S)
    order = re.findall(r"`(\w+)`", listed.group(1)) if listed else []
    modules = sorted(path.stem for path in (ROOT / "api").glob("*.py") if path.stem != "__init__")
    assert sorted(order) == modules, "CONTRIBUTING.md's import order names every module of api/ once"
    for module in order:
        tree = ast.parse((ROOT / "api" / f"{module}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        earlier = imported & set(order[: order.index(module) + 1])
        assert not earlier, f"api/{module}.py imports {sorted(earlier)}, which come before it (or are itself) in CONTRIBUTING.md's order"
