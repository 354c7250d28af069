"""Enumerations used across the public API."""

from __future__ import annotations

from enum import Enum


class SchedulerRole(Enum):
    """What a scheduler instance does with the shared data store.

    ``scheduler`` turns due schedules into jobs, ``worker`` runs jobs, ``both`` does both.
    """

    scheduler = "scheduler"
    worker = "worker"
    both = "both"


class RunState(Enum):
    """Life cycle state of a scheduler instance."""

    stopped = "stopped"
    starting = "starting"
    started = "started"
    stopping = "stopping"


class CoalescePolicy(Enum):
    """Which of several due fire times of one schedule become jobs.

    ``latest`` runs one job for the newest fire time, ``earliest`` one for the oldest and
    ``all`` one job per fire time.
    """

    earliest = "earliest"
    latest = "latest"
    all = "all"


class ConflictPolicy(Enum):
    """What ``add_schedule`` does when a schedule with the same id already exists.

    ``do_nothing`` keeps the existing schedule, ``replace`` overwrites it and ``exception``
    raises :class:`~asched.ConflictingIdError`.
    """

    replace = "replace"
    do_nothing = "do_nothing"
    exception = "exception"


class JobOutcome(Enum):
    """How a job ended."""

    success = "success"
    error = "error"
    missed_start_deadline = "missed_start_deadline"
    cancelled = "cancelled"
    abandoned = "abandoned"
