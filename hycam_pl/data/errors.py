"""The one exception type the data pipeline raises for bad data or configuration."""

from __future__ import annotations


class DataError(ValueError):
    """Invalid data or data configuration; the message names the task, the file, the record and the field.

    A ``ValueError`` subclass so callers that already catch ``ValueError`` keep working.
    """
