#!/usr/bin/env python3
"""Seconds per notebook under nbval, summed from a pytest JUnit XML report.

nbval makes one pytest item per code cell, so `--durations` lists cells, not notebooks. Run pytest
with `--junitxml=test-artifacts/junit.xml`, then:

    python .ci/nbval_times.py test-artifacts/junit.xml

prints one line per notebook (cells, failures, seconds) and the total, slowest first.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict


def notebook_of(testcase: ET.Element) -> str | None:
    """The notebook an nbval item belongs to (its items are named 'Cell N'); None for other tests."""
    if not (testcase.get("name") or "").startswith("Cell "):
        return None
    if ".ipynb" in (testcase.get("file") or ""):
        return testcase.get("file")
    classname = testcase.get("classname") or ""  # 'notebooks.04_training_a_vae.ipynb'
    return classname.removesuffix(".ipynb").replace(".", "/") + ".ipynb" if classname else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("junit_xml")
    args = parser.parse_args(argv)
    seconds: dict[str, float] = defaultdict(float)
    cells: dict[str, int] = defaultdict(int)
    failures: dict[str, int] = defaultdict(int)
    for testcase in ET.parse(args.junit_xml).getroot().iter("testcase"):
        notebook = notebook_of(testcase)
        if notebook is None:
            continue
        seconds[notebook] += float(testcase.get("time", 0.0))
        cells[notebook] += 1
        failures[notebook] += sum(1 for child in testcase if child.tag in ("failure", "error"))
    if not seconds:
        print("no notebook cells in this report", file=sys.stderr)
        return 1
    width = max(map(len, seconds))
    print(f"{'notebook':<{width}}  cells  failed  seconds")
    for notebook in sorted(seconds, key=seconds.get, reverse=True):
        print(f"{notebook:<{width}}  {cells[notebook]:>5}  {failures[notebook]:>6}  {seconds[notebook]:>7.1f}")
    print(f"{'total':<{width}}  {sum(cells.values()):>5}  {sum(failures.values()):>6}  {sum(seconds.values()):>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
