"""Prefect flows over the anoaug stages: `category` (one category), `benchmark` (fan-out), `deploy` (serve).

Import ``flows.env`` first (it does not import prefect) to point PREFECT_HOME and logging where you
want them; the other modules import prefect.
"""
