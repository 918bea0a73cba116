"""Stage orchestration that is not Prefect-specific: fingerprints, idempotent stages, run manifests.

``flows/`` wraps each stage of ``anoaug.pipeline.stages`` in a Prefect task; this package never
imports prefect, so every stage also runs (and skips finished work) without it.
"""
