#!/usr/bin/env python3
"""Give every notebook an "Open in Colab" badge beside its Binder badge, and Colab navigation links.

Relative links between notebooks work in JupyterLab and on the repository page, but not on Colab, which
opens each notebook on its own. So the first cell gets, next to the Binder badge, a Colab badge for this
notebook; every navigation line ("← previous | Contents | next →", at the top and the bottom) gets a second
line with the same links in Colab's GitHub-path form; and every other link to a notebook in the text gets a
small "Colab" link beside it. The repository and branch are read from the Binder badge, so all agree.
Idempotent: rerunning replaces what it wrote before.

    python .ci/colab_links.py notebooks/*.ipynb          # rewrite in place
    python .ci/colab_links.py --check notebooks/*.ipynb  # exit 1 if a notebook needs it

tests/test_notebook_series.py checks the badges and that every Colab link resolves.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

BINDER = re.compile(r"https://mybinder\.org/v2/gh/(?P<repo>[^/\s]+/[^/\s]+)/(?P<branch>[^/?\s]+)")
COLAB_BADGE = re.compile(r"[ \t]*\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
COLAB_NAV = re.compile(r"\n?<sub>On Colab:.*?</sub>", re.S)
RELATIVE_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[\w.-]+\.ipynb)\)")
TEXT_LINK = re.compile(r"\[(?P<text>[^\]]+)\]\((?P<target>[\w.-]+\.ipynb)(?P<anchor>#[^)\s]*)?\)")
TEXT_MARK = re.compile(r"<sup>\[Colab\]\([^)]*\)</sup>")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"


def colab_url(repo: str, branch: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/{branch}/notebooks/{notebook}"


def with_colab_links(source: str, notebook: str) -> str:
    """The first cell's markdown with the Colab badge and navigation line (re)written."""
    binder = BINDER.search(source)
    if binder is None:
        raise ValueError(f"{notebook}: no Binder badge in the first cell to take the repository from")
    repo, branch = binder["repo"], binder["branch"]
    source = COLAB_NAV.sub("", COLAB_BADGE.sub("", source))
    lines = source.split("\n")
    badge_line = next(i for i, line in enumerate(lines) if BINDER.search(line))
    lines[badge_line] += f" [![Open In Colab]({BADGE_IMAGE})]({colab_url(repo, branch, notebook)})"
    nav_line = next((i for i, line in enumerate(lines) if len(RELATIVE_LINK.findall(line)) >= 2), None)
    if nav_line is not None:
        links = [f"[{m['text']}]({colab_url(repo, branch, m['target'])})" for m in RELATIVE_LINK.finditer(lines[nav_line])]
        lines.insert(nav_line + 1, "<sub>On Colab: " + " | ".join(links) + "</sub>")
    return "\n".join(lines)


def with_text_links(source: str, repo: str, branch: str) -> str:
    """A markdown cell with a Colab line under each navigation line and a Colab link beside every other
    link to a notebook (Colab opens a notebook at its top: the section anchor is left out there)."""
    lines = COLAB_NAV.sub("", TEXT_MARK.sub("", source)).split("\n")
    out = []
    for line in lines:
        if len(RELATIVE_LINK.findall(line)) >= 2 and line.lstrip().startswith("["):  # a navigation line
            links = [f"[{m['text']}]({colab_url(repo, branch, m['target'])})" for m in RELATIVE_LINK.finditer(line)]
            out += [line, "<sub>On Colab: " + " | ".join(links) + "</sub>"]
        else:
            out.append(TEXT_LINK.sub(lambda m: f"{m[0]}<sup>[Colab]({colab_url(repo, branch, m['target'])})</sup>", line))
    return "\n".join(out)


def with_all_colab_links(nb, notebook: str) -> list[str]:
    """The new sources of all markdown cells: the first cell's badge, then every cell's links."""
    binder = BINDER.search(nb.cells[0].source)
    if binder is None:
        raise ValueError(f"{notebook}: no Binder badge in the first cell to take the repository from")
    sources = []
    for index, cell in enumerate(nb.cells):
        source = cell.source
        if cell.cell_type == "markdown":
            if index == 0:
                source = with_colab_links(source, notebook)
                source = COLAB_NAV.sub("", source)  # with_text_links writes the navigation line below
            source = with_text_links(source, binder["repo"], binder["branch"])
        sources.append(source)
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook needs it")
    args = parser.parse_args(argv)
    stale = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        updated = with_all_colab_links(nb, path.name)
        if updated != [cell.source for cell in nb.cells]:
            stale.append(path)
            if not args.check:
                for cell, source in zip(nb.cells, updated):
                    cell.source = source
                nbformat.write(nb, path)
                print(f"wrote Colab links into {path}")
    if args.check and stale:
        print("Colab links missing or stale in: " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
