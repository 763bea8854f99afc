"""The markdown tables of the reports (RESULTS.md, TABLE.md), drawn by pandas.

Every cell arrives formatted (each column has its own number format, and a missing value is
a dash), so tabulate's number parsing is off: a cell is written exactly as given."""

from __future__ import annotations

from typing import Sequence

import pandas as pd


def markdown(rows: Sequence[Sequence[str]], columns: Sequence[str]) -> str:
    """A pipe table (GitHub markdown) with one line per row of formatted cells."""
    columns = list(columns)
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"every row needs {len(columns)} cells ({columns})")
    frame = pd.DataFrame([list(map(str, row)) for row in rows], columns=columns, dtype=object)
    return frame.to_markdown(index=False, disable_numparse=True)
