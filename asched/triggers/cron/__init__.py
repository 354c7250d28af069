"""The cron trigger: APScheduler-style fields and crontab lines."""

from __future__ import annotations

from .trigger import CronTrigger

__all__ = ["CronTrigger"]
