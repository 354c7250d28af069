"""Data stores: where schedules, jobs and results live and where schedulers coordinate."""

from .base import BaseExternalDataStore, DataStore, RetrySettings
from .memory import MemoryDataStore

__all__ = ["BaseExternalDataStore", "DataStore", "MemoryDataStore", "RetrySettings"]
