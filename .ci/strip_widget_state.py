#!/usr/bin/env python3
"""Remove saved ipywidgets state and widget views from notebooks, so none reopens as a dead widget.

A notebook saved with widgets keeps their state in `metadata.widgets` and one
`application/vnd.jupyter.widget-view+json` output per displayed widget (sliders, tqdm.auto progress
bars). Reopened later, those outputs point at models that no running kernel has: JupyterLab 4 shows
their text fallback ("LatentExplorer(children=(HBox(...") and other frontends "Error displaying
widget: model not found". Widgets only work live, so we save none: this script drops
`metadata.widgets` and every output that is a widget view (figures, text and tables stay).

    python .ci/strip_widget_state.py notebooks/*.ipynb          # rewrite in place
    python .ci/strip_widget_state.py --check notebooks/*.ipynb  # exit 1 if any notebook needs it

tests/test_notebook_series.py enforces the result.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def is_widget_view(output) -> bool:
    return output.get("output_type") in ("display_data", "execute_result") and WIDGET_VIEW in output.get("data", {})


def strip_widget_state(nb) -> bool:
    """Strip widget state from a notebook node in place; return whether anything changed."""
    changed = nb.metadata.pop("widgets", None) is not None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [output for output in cell.outputs if not is_widget_view(output)]
        if len(kept) != len(cell.outputs):
            cell.outputs = kept
            changed = True
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if a notebook has widget state")
    args = parser.parse_args(argv)
    needs_stripping = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
        if strip_widget_state(nb):
            needs_stripping.append(path)
            if not args.check:
                nbformat.write(nb, path)
                print(f"stripped widget state from {path}")
    if args.check and needs_stripping:
        print("saved widget state in: " + ", ".join(map(str, needs_stripping)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
