"""Prefect flows: they orchestrate the pipelines (plan, map partitions as tasks, consolidate,
report, publish) and hold no pipeline logic of their own."""
