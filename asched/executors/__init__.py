"""Job executors: where job functions run."""

from .async_ import AsyncJobExecutor
from .base import JobExecutor
from .process import ProcessPoolJobExecutor
from .thread import ThreadPoolJobExecutor

__all__ = ["AsyncJobExecutor", "JobExecutor", "ProcessPoolJobExecutor", "ThreadPoolJobExecutor"]
