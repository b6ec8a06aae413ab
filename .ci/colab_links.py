#!/usr/bin/env python3
"""Give every notebook an "Open in Colab" badge beside its Binder badge, and Colab navigation links.

Relative links between notebooks work in JupyterLab and on the repository page, but not on Colab, which
opens each notebook on its own. So the first cell gets, next to the Binder badge, a Colab badge for this
notebook, and under the usual "← previous | Contents | next →" line a second line with the same links in
Colab's GitHub-path form. The repository and branch are read from the Binder badge, so both agree.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook needs it")
    args = parser.parse_args(argv)
    stale = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        first = nb.cells[0]
        updated = with_colab_links(first.source, path.name)
        if updated != first.source:
            stale.append(path)
            if not args.check:
                first.source = updated
                nbformat.write(nb, path)
                print(f"wrote Colab links into {path}")
    if args.check and stale:
        print("Colab links missing or stale in: " + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
