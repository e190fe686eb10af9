"""Reports over run folders: collect them into a DataFrame, compare runs, format the table.

Reads run folders only through expkit.runfolder and never imports TensorFlow. pandas is imported
inside the functions that build DataFrames, so `expkit diff` (which needs only the constants and
cell formatting) starts without it.

- `collect`: run, run-name and sweep folders -> one row per run
- `columns`: the metric columns, and a config flattened into columns
- `table`: grouping by config, averaging over seeds, difference rows; a sweep's results files
- `formatting`: Markdown, CSV and LaTeX text at fixed precision
- `reference`: a report's published numbers (configs/reference/*.csv) as rows beside ours
- `stats`: tests between rows over their seeds (scipy, imported when asked); `claims`: claims.yaml verdicts
"""

from ..runfolder import FINISHED
from .collect import NOT_A_RUN, collect_runs
from .columns import (METRICS, NOT_COMPARED, RUN_COLUMNS, STD_METRICS, architecture, compact, flatten_config,
                      is_missing)
from .formatting import DIFFERENCE_PREFIX, FORMATS, PUBLISHED, PUBLISHED_SUFFIX, format_number, format_table
from .reference import load_reference, read_table_csv, with_reference
from .table import add_differences, comparison_table, difference_row, write_sweep_results

__all__ = [
    "DIFFERENCE_PREFIX", "FINISHED", "FORMATS", "METRICS", "NOT_A_RUN", "NOT_COMPARED", "PUBLISHED", "PUBLISHED_SUFFIX",
    "RUN_COLUMNS", "STD_METRICS", "add_differences", "architecture", "collect_runs", "compact", "comparison_table",
    "difference_row", "flatten_config", "format_number", "format_table", "is_missing", "load_reference",
    "read_table_csv", "with_reference", "write_sweep_results",
]
