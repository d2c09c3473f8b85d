"""Every on-disk and on-wire format of the project, versioned, in one place.

- episode_store: the canonical Zarr episode store and its Parquet manifest / dead-letter table
- ground_truth:  per-frame ground-truth progress of benchmark datasets
- validate:      `conform`, the one table check everything uses
"""

from schemas.validate import SchemaError, conform

__all__ = ["SchemaError", "conform"]
