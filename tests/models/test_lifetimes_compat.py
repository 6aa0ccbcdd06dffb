"""The numbered list of lifetimes workarounds agrees with the numbers cited in the code."""

from __future__ import annotations

import re
from pathlib import Path

import models
from models import _lifetimes_compat

MODELS_DIR = Path(models.__file__).parent
CITATION = re.compile(r"[Ww]orkarounds? (\d+)(?: and (\d+))?")


def test_every_workaround_is_listed_and_cited_where_applied():
    docstring = _lifetimes_compat.__doc__
    listed = [int(number) for number in re.findall(r"^(\d+)\. ", docstring, flags=re.MULTILINE)]
    assert listed == list(range(1, len(listed) + 1))

    cited = set()
    for path in MODELS_DIR.glob("*.py"):
        text = path.read_text()
        if path.name == "_lifetimes_compat.py":
            text = text.replace(docstring, "")  # the list itself cites nothing
        for match in CITATION.finditer(text):
            cited.update(int(number) for number in match.groups() if number)
    assert cited - set(listed) == set(), "cited but not in the list"
    assert set(listed) - cited == set(), "listed but cited nowhere in models/"
