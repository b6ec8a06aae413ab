"""The notebooks read as one series: static checks on notebooks/*.ipynb (nothing is executed here).

Every rule is one test, parametrized over the notebooks that exist, so a notebook dropped into
notebooks/ is checked without editing this file. The rules:

- file names `NN_snake_case_name.ipynb`, numbered 00, 01, ... without gaps or duplicates;
- valid nbformat;
- one level-1 title, in the first markdown cells, and a Binder badge near the top that opens
  JupyterLab on that very notebook (all badges name the same repository);
- "previous" / "next" links to the neighbouring notebooks, and every link to a notebook resolves;
- the same sections: `## Learning goals` first; `## Summary`, `## Exercises`, `## References` last,
  in that order; each exercise's solution folded in a `<details>` block;
- no saved widget state and no saved widget views (reopened without their kernel they show as dead
  text, or as "Error displaying widget"; strip them with `python .ci/strip_widget_state.py notebooks/*.ipynb`);
- no error outputs and no stale outputs: saved outputs come from one clean top-to-bottom run
  (execution counts 1, 2, 3, ... in cell order) or the notebook is cleared.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
FILE_NAME = re.compile(r"^(?P<number>\d{2})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.ipynb$")
APPENDIX_NAME = re.compile(r"^appendix_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.ipynb$")
# The numbered series (00, 01, ...) and the appendices (appendix_*.ipynb), which hang off 00.
SERIES = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if FILE_NAME.match(p.name))
APPENDICES = sorted(p for p in NOTEBOOK_DIR.glob("*.ipynb") if APPENDIX_NAME.match(p.name))
NOTEBOOKS = SERIES + APPENDICES
FIRST_SECTION = "Learning goals"
LAST_SECTIONS = ["Summary", "Exercises", "References"]
TITLE_WITHIN_FIRST_MARKDOWN_CELLS = 2
BADGE_WITHIN_FIRST_CELLS = 3
BINDER_URL = re.compile(r"https://mybinder\.org/v2/[^\s)\"'<>\]]+")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
STRIP_HINT = "run `python .ci/strip_widget_state.py notebooks/*.ipynb`"

# [text](target) with at most one level of nested brackets in the text (badges: [![alt](img)](url)),
# and <a href="target">text</a>.
MARKDOWN_LINK = re.compile(r"\[(?P<text>(?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"<a\s[^>]*href=[\"'](?P<target>[^\"']+)[\"'][^>]*>(?P<text>.*?)</a>", re.S | re.I)
FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<text>.+?)\s*#*\s*$", re.M)


def notebook_params():
    return [pytest.param(path, id=path.name) for path in NOTEBOOKS]


@functools.lru_cache(maxsize=None)
def read(path: Path):
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def markdown(cell) -> str:
    """A markdown cell's text without fenced code blocks (whose '# comments' are not headings)."""
    return FENCED_CODE.sub("", cell.source)


def headings(nb, level: int) -> list[tuple[int, str]]:
    """(cell index, heading text) for every heading of exactly this level, in order."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for match in HEADING.finditer(markdown(cell)):
                if len(match["level"]) == level:
                    found.append((index, match["text"].strip()))
    return found


def links(text: str) -> list[tuple[str, str]]:
    """(link text, target) for markdown and HTML links."""
    found = [(m["text"], m["target"]) for m in MARKDOWN_LINK.finditer(text)]
    found += [(re.sub(r"<[^>]+>", "", m["text"]), m["target"]) for m in HTML_LINK.finditer(text)]
    return found


def notebook_links(nb) -> list[tuple[int, str, str]]:
    """(cell index, link text, target file name) for every relative link to a .ipynb file."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for text, target in links(markdown(cell)):
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not unquote(parts.path).endswith(".ipynb"):
                continue
            found.append((index, text, unquote(parts.path)))
    return found


def cell_label(nb, index: int) -> str:
    first_line = next((line for line in nb.cells[index].source.splitlines() if line.strip()), "")
    return f"cell {index} ({first_line[:60]!r})"


def neighbours(path: Path) -> tuple[Path | None, Path | None]:
    """The previous and next notebook of the numbered series; an appendix sits between 00 and 01."""
    if path in APPENDICES:
        return SERIES[0], (SERIES[1] if len(SERIES) > 1 else None)
    index = SERIES.index(path)
    previous = SERIES[index - 1] if index > 0 else None
    following = SERIES[index + 1] if index + 1 < len(SERIES) else None
    return previous, following


def binder_badges(nb) -> list[str]:
    found = []
    for cell in nb.cells[:BADGE_WITHIN_FIRST_CELLS]:
        if cell.cell_type == "markdown":
            found += BINDER_URL.findall(cell.source)
    return found


def binder_target(url: str) -> str | None:
    """The file a Binder link opens: its `labpath`, or a `urlpath=lab/tree/...`."""
    query = parse_qs(urlsplit(url).query)
    if "labpath" in query:
        return unquote(query["labpath"][0]).lstrip("/")
    if "urlpath" in query:
        urlpath = unquote(query["urlpath"][0]).lstrip("/")
        for prefix in ("lab/tree/", "doc/tree/"):
            if urlpath.startswith(prefix):
                return urlpath[len(prefix):]
    return None


# ---------------------------------------------------------------------------------------------------
# The series as a whole
# ---------------------------------------------------------------------------------------------------


def test_series_exists():
    assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR.relative_to(REPO)}/"


def test_file_names_are_two_digit_number_underscore_snake_case():
    bad = [p.name for p in sorted(NOTEBOOK_DIR.glob("*.ipynb")) if p not in NOTEBOOKS]
    assert not bad, (
        f"notebook file names {bad} do not follow 'NN_snake_case_name.ipynb' (two digits, underscore, "
        "lowercase words joined by underscores), e.g. '05_exploring_the_latent_space.ipynb', or "
        "'appendix_snake_case_name.ipynb' for an appendix"
    )


def test_notebooks_are_numbered_from_00_without_gaps_or_duplicates():
    numbers = [int(m[1]) for p in SERIES if (m := re.match(r"(\d+)_", p.name))]
    expected = list(range(len(numbers)))
    assert numbers == expected, (
        f"notebooks are numbered {[f'{n:02d}' for n in numbers]}; the series must run "
        f"{[f'{n:02d}' for n in expected]} (start at 00, no gaps, one notebook per number)"
    )


def test_binder_badges_all_name_the_same_repository():
    repositories = {}
    for path in NOTEBOOKS:
        for url in binder_badges(read(path)):
            repositories.setdefault(url.split("?")[0].rstrip("/"), []).append(path.name)
    assert len(repositories) <= 1, f"Binder badges point at different repositories or branches: {repositories}"


def test_readme_has_a_binder_badge_for_the_same_repository():
    readme = (REPO / "README.md").read_text()
    urls = BINDER_URL.findall(readme)
    assert urls, (
        "README.md has no Binder badge; add e.g. [![Binder](https://mybinder.org/badge_logo.svg)]"
        "(https://mybinder.org/v2/gh/OWNER/REPO/main?urlpath=lab/tree/notebooks/00_start_here.ipynb)"
    )
    notebook_repositories = {url.split("?")[0].rstrip("/") for p in NOTEBOOKS for url in binder_badges(read(p))}
    readme_repositories = {url.split("?")[0].rstrip("/") for url in urls}
    assert not notebook_repositories or readme_repositories <= notebook_repositories, (
        f"README.md's Binder badge points at {sorted(readme_repositories)}, the notebooks' at "
        f"{sorted(notebook_repositories)}"
    )
    for url in urls:
        target = binder_target(url)
        assert target is None or (REPO / target).is_file(), f"README.md's Binder badge opens {target!r}, which does not exist"


# ---------------------------------------------------------------------------------------------------
# Each notebook
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", notebook_params())
def test_is_valid_nbformat(path):
    nb = read(path)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as error:
        pytest.fail(f"{path.name} is not a valid notebook (nbformat {nb.nbformat}.{nb.nbformat_minor}): {error.message}")


@pytest.mark.parametrize("path", notebook_params())
def test_has_one_level_1_title_in_its_first_markdown_cells(path):
    nb = read(path)
    titles = headings(nb, level=1)
    assert titles, f"{path.name} has no level-1 title ('# Title') in a markdown cell"
    assert len(titles) == 1, (
        f"{path.name} has {len(titles)} level-1 headings {[t for _, t in titles]}; keep one '# Title' "
        "and make the others '## Section' headings"
    )
    first_markdown = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"][:TITLE_WITHIN_FIRST_MARKDOWN_CELLS]
    assert titles[0][0] in first_markdown, (
        f"{path.name}: the title {titles[0][1]!r} is in {cell_label(nb, titles[0][0])}; put it in one of "
        f"the first {TITLE_WITHIN_FIRST_MARKDOWN_CELLS} markdown cells"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_has_binder_badge_that_opens_this_notebook(path):
    badges = binder_badges(read(path))
    own_path = f"{NOTEBOOK_DIR.name}/{path.name}"
    assert badges, (
        f"{path.name} has no Binder badge in its first {BADGE_WITHIN_FIRST_CELLS} cells; add "
        f"[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/OWNER/REPO/HEAD?labpath={own_path.replace('/', '%2F')})"
    )
    targets = [binder_target(url) for url in badges]
    assert own_path in targets, (
        f"{path.name}: Binder badge opens {targets}, not this notebook; use '?labpath={own_path.replace('/', '%2F')}'"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_links_to_notebooks_point_to_files_that_exist(path):
    nb = read(path)
    broken = [
        f"{cell_label(nb, index)} links to {target!r}"
        for index, _, target in notebook_links(nb)
        if not (path.parent / target).resolve().is_file()
    ]
    assert not broken, f"{path.name} has links to notebooks that do not exist: {broken}"


@pytest.mark.parametrize("path", notebook_params())
def test_links_to_previous_and_next_notebooks(path):
    nb = read(path)
    previous, following = neighbours(path)
    linked = {Path(target).name for _, _, target in notebook_links(nb)}
    if previous is not None:
        assert previous.name in linked, f"{path.name} has no link to the previous notebook, {previous.name}"
    if following is not None:
        assert following.name in linked, f"{path.name} has no link to the next notebook, {following.name}"
    for index, text, target in notebook_links(nb):
        label = text.lower()
        if "previous" in label or "prev:" in label or "←" in text:
            assert previous is not None and Path(target).name == previous.name, (
                f"{path.name} {cell_label(nb, index)}: the link {text!r} goes to {target!r}; the previous "
                f"notebook is {previous.name if previous else 'none (this is the first)'}"
            )
        if re.search(r"\bnext\b", label) or "→" in text:
            assert following is not None and Path(target).name == following.name, (
                f"{path.name} {cell_label(nb, index)}: the link {text!r} goes to {target!r}; the next "
                f"notebook is {following.name if following else 'none (this is the last)'}"
            )


@pytest.mark.parametrize("path", notebook_params())
def test_sections_start_with_learning_goals_and_end_with_summary_exercises_references(path):
    sections = [text for _, text in headings(read(path), level=2)]
    assert sections[:1] == [FIRST_SECTION], (
        f"{path.name}: the first '## ' section must be '## {FIRST_SECTION}'; sections are {sections}"
    )
    assert sections[-len(LAST_SECTIONS):] == LAST_SECTIONS, (
        f"{path.name}: the last '## ' sections must be {['## ' + s for s in LAST_SECTIONS]} in that order; "
        f"sections are {sections}"
    )
    for name in [FIRST_SECTION, *LAST_SECTIONS]:
        assert sections.count(name) == 1, f"{path.name} has '## {name}' {sections.count(name)} times"


@pytest.mark.parametrize("path", notebook_params())
def test_exercises_have_folded_details_solutions(path):
    nb = read(path)
    section = headings(nb, level=2)
    starts = [i for i, text in section if text == "Exercises"]
    ends = [i for i, text in section if text == "References"]
    if not starts or not ends:
        pytest.fail(f"{path.name} has no '## Exercises' ... '## References' sections (see the sections test)")
    # From the Exercises heading to the References heading (cells may share the heading's cell).
    cells = nb.cells[starts[0]: ends[-1] + 1]
    text = "\n".join(markdown(c) for c in cells if c.cell_type == "markdown")
    text = text.split("## Exercises", 1)[-1].split("## References", 1)[0]
    details = re.findall(r"<details\b([^>]*)>(.*?)</details>", text, re.S | re.I)
    assert details, (
        f"{path.name}: the Exercises section has no folded solution; put each solution in "
        "<details><summary>Solution</summary> ... </details>"
    )
    opened = [attrs for attrs, _ in details if re.search(r"\bopen\b", attrs)]
    assert not opened, f"{path.name}: {len(opened)} solution(s) use <details open>; solutions start folded"
    without_summary = [body[:60] for _, body in details if not re.search(r"<summary\b", body, re.I)]
    assert not without_summary, f"{path.name}: <details> without a <summary> (e.g. 'Solution'): {without_summary}"
    exercises = re.findall(r"^###\s+(.+)$", text, re.M)
    assert len(details) >= len(exercises), (
        f"{path.name}: {len(exercises)} exercises ({exercises}) but only {len(details)} <details> solutions"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_no_saved_widget_state(path):
    nb = read(path)
    assert "widgets" not in nb.metadata, (
        f"{path.name} saves widget state in metadata.widgets (widgets only work live: reopened, they are "
        f"dead or show 'Error displaying widget'); {STRIP_HINT}"
    )
    views = [
        (cell_label(nb, i), out["data"].get("text/plain", "")[:40])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for out in cell.outputs
        if WIDGET_VIEW in out.get("data", {})
    ]
    assert not views, (
        f"{path.name} saves widget views in the outputs of {[label for label, _ in views]}; reopened without "
        f"their kernel they show as dead text such as {views[0][1] + '...'!r} (JupyterLab 4) or 'Error "
        f"displaying widget: model not found' (other frontends); {STRIP_HINT}"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_no_error_outputs(path):
    nb = read(path)
    errors = [
        f"{cell_label(nb, i)}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and "raises-exception" not in cell.metadata.get("tags", [])
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert not errors, (
        f"{path.name} is saved with error outputs {errors}; fix the cause and rerun the notebook "
        "(a cell that fails on purpose gets the 'raises-exception' tag)"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_code_cells_with_outputs_have_execution_counts(path):
    nb = read(path)
    stale = [
        cell_label(nb, i)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and cell.outputs and cell.execution_count is None
    ]
    assert not stale, f"{path.name}: {stale} have outputs but no execution count (stale outputs); rerun the notebook"


@pytest.mark.parametrize("path", notebook_params())
def test_execution_counts_increase_from_1_in_cell_order(path):
    nb = read(path)
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code" and c.execution_count is not None]
    if not counts:
        return  # a cleared notebook
    in_order = counts[0] == 1 and all(a < b for a, b in zip(counts, counts[1:]))
    assert in_order, (
        f"{path.name}: execution counts are {counts}; a clean run counts 1, 2, 3, ... down the page. "
        "Restart the kernel and run all cells, then save"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_run_completely_or_cleared(path):
    nb = read(path)
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.strip()]
    executed = [i for i, c in code if c.execution_count is not None]
    if not executed:
        return
    not_run = [cell_label(nb, i) for i, c in code if c.execution_count is None]
    assert not not_run, (
        f"{path.name} was saved part-way through a run: {not_run} never ran. Restart the kernel and run "
        "all cells, then save (or clear all outputs)"
    )


# ---------------------------------------------------------------------------------------------------
# Colab, appendices, notation and references (every reader reached; claims that cannot drift)
# ---------------------------------------------------------------------------------------------------

COLAB_URL = re.compile(r"https://colab\.research\.google\.com/github/(?P<repo>[^/\s]+/[^/\s]+)/blob/(?P<branch>[^/\s]+)/(?P<path>[^\s)\"'<>\]#?]+)")
COLAB_FIRST_CELL = ("google.colab", "pip install")
MAX_CODE_CELL_LINES = 25


def github_repository(binder_url: str) -> str:
    """'OWNER/REPO' of a Binder badge https://mybinder.org/v2/gh/OWNER/REPO/BRANCH?..."""
    return "/".join(urlsplit(binder_url).path.split("/")[3:5])


@pytest.mark.parametrize("path", notebook_params())
def test_has_colab_badge_that_opens_this_notebook_from_the_binder_repository(path):
    nb = read(path)
    own_path = f"{NOTEBOOK_DIR.name}/{path.name}"
    colab = [m for cell in nb.cells[:BADGE_WITHIN_FIRST_CELLS] if cell.cell_type == "markdown"
             for m in COLAB_URL.finditer(cell.source)]
    assert colab, (
        f"{path.name} has no 'Open in Colab' badge in its first {BADGE_WITHIN_FIRST_CELLS} cells; add "
        f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        f"(https://colab.research.google.com/github/OWNER/REPO/blob/main/{own_path})"
    )
    assert own_path in [m["path"] for m in colab], f"{path.name}: the Colab badge opens {[m['path'] for m in colab]}"
    repositories = {github_repository(url) for url in binder_badges(nb)}
    assert {m["repo"] for m in colab} <= repositories, (
        f"{path.name}: the Colab badge names {sorted({m['repo'] for m in colab})}, the Binder badge {sorted(repositories)}"
    )


def test_readme_has_a_colab_badge_for_the_same_repository():
    readme = (REPO / "README.md").read_text()
    colab = list(COLAB_URL.finditer(readme))
    assert colab, "README.md has no 'Open in Colab' badge next to the Binder badge"
    binder = {github_repository(url) for url in BINDER_URL.findall(readme)}
    for match in colab:
        assert match["repo"] in binder, f"README.md's Colab badge names {match['repo']}, its Binder badge {binder}"
        assert (REPO / match["path"]).is_file(), f"README.md's Colab badge opens {match['path']!r}, which does not exist"


@pytest.mark.parametrize("path", notebook_params())
def test_first_code_cell_installs_vae_utils_on_colab_only(path):
    nb = read(path)
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    assert first is not None and all(word in first.source for word in COLAB_FIRST_CELL), (
        f"{path.name}: the first code cell must install vae_utils on Colab only "
        "(`if \"google.colab\" in sys.modules: !pip install ...`), so the notebook runs there as it is"
    )
    assert re.search(r"^if\s+[\"']google\.colab[\"']\s+in\s+sys\.modules\s*:", first.source, re.M), (
        f"{path.name}: the Colab install in the first code cell must be guarded by "
        "`if \"google.colab\" in sys.modules:` so it does nothing elsewhere (and under nbval)"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_colab_links_to_notebooks_point_to_files_that_exist(path):
    nb = read(path)
    broken = [
        f"{cell_label(nb, i)} opens {m['path']!r} on Colab"
        for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
        for m in COLAB_URL.finditer(cell.source)
        if not (REPO / m["path"]).is_file()
    ]
    assert not broken, f"{path.name} has Colab links to files that do not exist: {broken}"


def test_every_appendix_is_linked_from_the_start_notebook():
    start = read(SERIES[0])
    linked = {Path(target).name for _, _, target in notebook_links(start)}
    missing = [p.name for p in APPENDICES if p.name not in linked]
    assert not missing, f"{SERIES[0].name} does not link to the appendices {missing}; readers would never find them"


# Things no notebook may point a reader to: files outside the repository.
OUTSIDE_REFERENCES = re.compile(r"derivation\.md|shared/seed|\.\./shared|source derivation", re.I)


@pytest.mark.parametrize("path", notebook_params())
def test_no_reference_to_files_outside_the_repository(path):
    nb = read(path)
    found = [f"{cell_label(nb, i)}: {m.group(0)!r}" for i, cell in enumerate(nb.cells)
             for m in OUTSIDE_REFERENCES.finditer(cell.source)]
    for index, _, target in notebook_links(nb):
        if REPO not in (path.parent / target).resolve().parents:
            found.append(f"{cell_label(nb, index)} links outside the repository: {target!r}")
    assert not found, f"{path.name} points readers to things they do not have: {found}"


def test_readme_references_nothing_outside_the_repository():
    readme = (REPO / "README.md").read_text()
    assert not OUTSIDE_REFERENCES.search(readme), (
        f"README.md points readers to {OUTSIDE_REFERENCES.search(readme).group(0)!r}, which is not in the repository"
    )


MATH = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$", re.S)
# Notation breaches a program can see in markdown math (00's notation table is the contract):
NOTATION_BREACHES = [
    (re.compile(r"(?<![\\\w])q\s*\("), "q(...) without its parameter: write q_\\phi(z \\mid x)"),
    (re.compile(r"(?<![\\\w])p\s*\(\s*x"), "p(x...) without its parameter: write p_\\theta(x), p_\\theta(x \\mid z), p_\\theta(x, z)"),
    (re.compile(r"(?<![\\\w])p\s*\(\s*z\s*(?:\\mid|\||,)"), "p(z | x) without its parameter: write p_\\theta(z \\mid x)"),
    (re.compile(r"\\sigma\s*\(|\\sigma\s*\\left\s*\("), "\\sigma(...) as a function: the sigmoid is \\mathrm{sigmoid}; \\sigma is a standard deviation"),
    (re.compile(r"\\sum_\{?\s*l\s*=\s*1\s*\}?\^\{?\s*L\b|\\frac\{1\}\{L\}"), "L as a sample count collides with the bound \\mathcal{L}: use S (Monte Carlo) or K (importance)"),
    (re.compile(r"\\mathcal\{L\}_(?!\{?\s*[0-9K])"), "a subscript on \\mathcal{L} only ever means the number of importance samples K"),
    (re.compile(r"\\varepsilon"), "the noise is \\epsilon in this series, not \\varepsilon"),
]


# A markdown cell that quotes a formula as it is often written, beside its correction, says so with this
# comment; its math is exempt (the quoted formula is the point).
QUOTED_NOTATION = "<!-- quoted notation -->"


def notation_breaches(nb, rules) -> list[str]:
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown" or QUOTED_NOTATION in cell.source:
            continue
        for match in MATH.finditer(markdown(cell)):
            formula = match.group(1) or match.group(2)
            for pattern, advice in rules:
                if hit := pattern.search(formula):
                    found.append(f"{cell_label(nb, index)}: {formula[max(0, hit.start() - 15): hit.end() + 15]!r}: {advice}")
    return found


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in SERIES])
def test_markdown_math_keeps_the_notation_contract(path):
    breaches = notation_breaches(read(path), NOTATION_BREACHES)
    assert not breaches, f"{path.name} breaks 00's notation table:\n" + "\n".join(breaches)


@pytest.mark.parametrize("formula, breaks", [
    (r"\mathcal{L}_K \le \mathcal{L}_{K+1}", False), (r"\mathcal{L}_{50} - \mathcal{L}_1", False),
    (r"\mathcal{L}_\beta", True), (r"\mathcal{L}_{\text{IW}}", True),
    (r"z = \mu + \sigma \odot \epsilon", False), (r"z = \mu + \sigma \odot \varepsilon", True),
])
def test_the_notation_rules_catch_what_they_name(formula, breaks):
    assert any(pattern.search(formula) for pattern, _ in NOTATION_BREACHES) == breaks, formula


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in APPENDICES])
def test_appendix_math_keeps_the_symbols_of_the_contract(path):
    # An appendix teaches probability in general, so a bare p(x) is fine there; the symbols are not.
    breaches = notation_breaches(read(path), NOTATION_BREACHES[3:])
    assert not breaches, f"{path.name} breaks 00's notation table:\n" + "\n".join(breaches)


@pytest.mark.parametrize("path", notebook_params())
def test_code_cells_are_short(path):
    nb = read(path)
    long = [f"{cell_label(nb, i)}: {len(c.source.splitlines())} lines" for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and len(c.source.strip().splitlines()) > MAX_CODE_CELL_LINES]
    assert not long, (
        f"{path.name} has code cells over {MAX_CODE_CELL_LINES} lines {long}; split them between short "
        "paragraphs, or move plotting boilerplate that teaches nothing about VAEs into vae_utils.plotting"
    )


@pytest.mark.parametrize("path", notebook_params())
def test_notebooks_use_one_import_style(path):
    nb = read(path)
    found = [f"{cell_label(nb, i)}: {m.group(0)!r}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
             for m in re.finditer(r"^\s*(?:from\s+vae_utils[\w.]*\s+import\s+.+|import\s+vae_utils\.\S+.*|import\s+vae_utils\s*$)", c.source, re.M)]
    assert not found, f"{path.name}: use `import vae_utils as vu` and `vu.name` / `vu.submodule.name` only: {found}"


def heading_anchors(nb) -> set[str]:
    """The anchors JupyterLab gives a notebook's headings: the heading's text with spaces made '-'."""
    anchors = set()
    for level in range(1, 7):
        for _, text in headings(nb, level):
            plain = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [text](url) shows as text
            plain = re.sub(r"[*_`]", "", plain)
            anchors.add(plain.strip().replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", notebook_params())
def test_links_to_sections_name_headings_that_exist(path):
    nb = read(path)
    broken = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for _, target in links(markdown(cell)):
            parts = urlsplit(target)
            if parts.scheme or parts.netloc or not parts.fragment:
                continue
            file = path if not parts.path else path.parent / unquote(parts.path)
            if file.suffix != ".ipynb" or not file.is_file():
                continue
            if unquote(parts.fragment) not in heading_anchors(read(file.resolve())):
                broken.append(f"{cell_label(nb, index)} links to {target!r}")
    assert not broken, f"{path.name} links to sections that do not exist (renamed headings?): {broken}"


def test_colab_badges_and_navigation_are_up_to_date():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "colab_links.py"), "--check", *map(str, NOTEBOOKS)],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, (
        f"{result.stderr.strip()}; run `python .ci/colab_links.py notebooks/*.ipynb` (relative links do not "
        "work on Colab, so every link to a notebook also has a Colab GitHub-path form)"
    )
