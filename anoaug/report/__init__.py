"""Reports of downstream evaluation runs: report.json / report.md / report.html and results.csv."""

from anoaug.report.build import load_runs, report_json_schema, summarise, write_report
from anoaug.report.schema import Report

__all__ = ["Report", "load_runs", "report_json_schema", "summarise", "write_report"]
