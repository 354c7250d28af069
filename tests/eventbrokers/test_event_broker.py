"""The contract every event broker passes, run against each implementation.

``event_brokers`` are two started brokers on the same channel: for external brokers
(PostgreSQL, Redis) they stand for two processes, and what one publishes reaches the other's
subscribers exactly once; the local broker only delivers within itself.
"""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from types import ModuleType
from uuid import uuid4

import anyio
import pytest

from asched import JobOutcome
from asched.eventbrokers import EventBroker
from asched.eventbrokers.base import BaseExternalEventBroker
from asched.events import (
    BrokerReconnected,
    DataStoreEvent,
    Event,
    JobAcquired,
    JobAdded,
    JobDeserializationFailed,
    JobReleased,
    ScheduleAdded,
    ScheduleDeserializationFailed,
    ScheduleRemoved,
    SchedulerStarted,
    SchedulerStopped,
    ScheduleUpdated,
    TaskAdded,
    TaskRemoved,
    TaskUpdated,
)
from tests.conftest import EventRecorder

pytestmark = pytest.mark.anyio

MOMENT = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone.utc)


def one_of_each_event() -> list[Event]:
    job_id = uuid4()
    return [
        TaskAdded(task_id="t"),
        TaskUpdated(task_id="t"),
        TaskRemoved(task_id="t"),
        ScheduleAdded(schedule_id="s", task_id="t", next_fire_time=MOMENT),
        ScheduleUpdated(schedule_id="s", task_id="t", next_fire_time=None),
        ScheduleRemoved(schedule_id="s", task_id="t", finished=True),
        JobAdded(job_id=job_id, task_id="t", schedule_id=None),
        JobAcquired(job_id=job_id, scheduler_id="w", task_id="t", schedule_id="s"),
        JobReleased(
            job_id=job_id,
            scheduler_id="w",
            task_id="t",
            schedule_id="s",
            scheduled_fire_time=MOMENT,
            outcome=JobOutcome.error,
            started_at=MOMENT,
            exception_type="builtins.ValueError",
            exception_message="ünïcode",
            exception_traceback="Traceback ...\n",
        ),
        ScheduleDeserializationFailed(schedule_id="s", error="bad trigger"),
        JobDeserializationFailed(job_id=job_id, error="bad args"),
        SchedulerStarted(scheduler_id="w"),
        SchedulerStopped(scheduler_id="w", exception_type="x.Y", exception_message="boom"),
    ]


async def settle(broker_backend: ModuleType) -> None:
    """Let an external broker's listener catch up (only used before asserting absence)."""
    if broker_backend.CROSS_PROCESS:
        await anyio.sleep(0.3)
    else:
        await anyio.lowlevel.checkpoint()


async def test_subscriber_receives_published_event(event_broker: EventBroker) -> None:
    recorder = EventRecorder()
    event_broker.subscribe(recorder)
    event = JobAdded(job_id=uuid4(), task_id="t", schedule_id=None)

    await event_broker.publish(event)

    assert await recorder.wait_for(JobAdded) == [event]


async def test_subscription_to_event_types_filters_and_includes_subclasses(
    event_broker: EventBroker, broker_backend: ModuleType
) -> None:
    jobs_only = EventRecorder()
    store_events = EventRecorder()
    event_broker.subscribe(jobs_only, {JobAdded, JobReleased})
    event_broker.subscribe(store_events, [DataStoreEvent])

    await event_broker.publish(SchedulerStarted(scheduler_id="me"))
    await event_broker.publish(TaskAdded(task_id="t"))
    added = JobAdded(job_id=uuid4(), task_id="t", schedule_id=None)
    await event_broker.publish(added)

    assert await jobs_only.wait_for(JobAdded) == [added]
    await store_events.wait_for(JobAdded)
    assert [type(event) for event in store_events.events] == [TaskAdded, JobAdded]
    await settle(broker_backend)
    assert jobs_only.events == [added]


async def test_one_shot_subscription_receives_one_event(
    event_broker: EventBroker, broker_backend: ModuleType
) -> None:
    once = EventRecorder()
    always = EventRecorder()
    event_broker.subscribe(once, {TaskAdded}, one_shot=True)
    event_broker.subscribe(always, {TaskAdded})

    await event_broker.publish(TaskAdded(task_id="first"))
    await event_broker.publish(TaskAdded(task_id="second"))

    await always.wait_for(TaskAdded, 2)
    await settle(broker_backend)
    assert [event.task_id for event in once.of_type(TaskAdded)] == ["first"]


async def test_unsubscribed_callback_receives_nothing_more(
    event_broker: EventBroker, broker_backend: ModuleType
) -> None:
    leaving = EventRecorder()
    staying = EventRecorder()
    subscription = event_broker.subscribe(leaving, {TaskAdded})
    event_broker.subscribe(staying, {TaskAdded})

    await event_broker.publish(TaskAdded(task_id="first"))
    await staying.wait_for(TaskAdded)
    subscription.unsubscribe()
    subscription.unsubscribe()  # a second call does nothing
    await event_broker.publish(TaskAdded(task_id="second"))

    await staying.wait_for(TaskAdded, 2)
    await settle(broker_backend)
    assert [event.task_id for event in leaving.of_type(TaskAdded)] == ["first"]


async def test_subscription_as_context_manager_unsubscribes_on_exit(
    event_broker: EventBroker, broker_backend: ModuleType
) -> None:
    inside = EventRecorder()
    outside = EventRecorder()
    event_broker.subscribe(outside, {TaskAdded})
    with event_broker.subscribe(inside, {TaskAdded}):
        await event_broker.publish(TaskAdded(task_id="first"))
        await inside.wait_for(TaskAdded)

    await event_broker.publish(TaskAdded(task_id="second"))
    await outside.wait_for(TaskAdded, 2)
    await settle(broker_backend)
    assert len(inside.events) == 1


async def test_coroutine_callback_is_awaited(event_broker: EventBroker) -> None:
    received = anyio.Event()
    seen: list[Event] = []

    async def callback(event: Event) -> None:
        await anyio.lowlevel.checkpoint()
        seen.append(event)
        received.set()

    event_broker.subscribe(callback, {TaskAdded})
    await event_broker.publish(TaskAdded(task_id="t"))

    with anyio.fail_after(10):
        await received.wait()
    assert [type(event) for event in seen] == [TaskAdded]


async def test_raising_callback_is_logged_and_others_still_receive(
    event_broker: EventBroker, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    reached_async = anyio.Event()

    async def broken_async(event: Event) -> None:
        reached_async.set()
        raise RuntimeError("async subscriber bug")

    recorder = EventRecorder()
    event_broker.subscribe(broken)
    event_broker.subscribe(broken_async)
    event_broker.subscribe(recorder)

    with caplog.at_level(logging.ERROR):
        await event_broker.publish(TaskAdded(task_id="one"))
        await event_broker.publish(TaskAdded(task_id="two"))
        await recorder.wait_for(TaskAdded, 2)
        with anyio.fail_after(10):
            await reached_async.wait()
        # the failing task logs before it yields, so the log is there once the waiter runs
        await anyio.lowlevel.checkpoint()

    assert "RuntimeError: subscriber bug" in caplog.text
    assert "RuntimeError: async subscriber bug" in caplog.text


async def test_subscribe_rejects_what_is_not_an_event_class(event_broker: EventBroker) -> None:
    with pytest.raises(TypeError, match="not an event class"):
        event_broker.subscribe(print, {str})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callable"):
        event_broker.subscribe("print")  # type: ignore[arg-type]


async def test_every_event_type_reaches_the_other_broker_intact(
    event_brokers: list[EventBroker], broker_backend: ModuleType
) -> None:
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker delivers within one process only")
    sender, receiver = event_brokers
    recorder = EventRecorder()
    receiver.subscribe(recorder)
    events = one_of_each_event()

    for event in events:
        await sender.publish(event)

    await recorder.wait_for(Event, len(events))
    assert recorder.events == events


async def test_external_event_is_delivered_once_to_each_side(
    event_brokers: list[EventBroker], broker_backend: ModuleType
) -> None:
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker delivers within one process only")
    sender, receiver = event_brokers
    at_sender = EventRecorder()
    at_receiver = EventRecorder()
    sender.subscribe(at_sender)
    receiver.subscribe(at_receiver)
    event = TaskAdded(task_id="t")

    await sender.publish(event)

    assert await at_receiver.wait_for(TaskAdded) == [event]
    await settle(broker_backend)
    assert at_sender.events == [event]
    assert at_receiver.events == [event]


async def test_unreadable_messages_and_events_from_elsewhere_are_skipped(
    event_brokers: list[EventBroker],
    broker_backend: ModuleType,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker receives no messages from other processes")
    receiver = event_brokers[1]
    assert isinstance(receiver, BaseExternalEventBroker)
    recorder = EventRecorder()
    receiver.subscribe(recorder)
    good = TaskAdded(task_id="t")
    batch = json.dumps(
        {"origin": "elsewhere", "events": [{"type": "NoSuchEvent"}, good.to_dict()]}
    )

    receiver.deliver_remote(b"not json")
    receiver.deliver_remote('{"origin":"elsewhere"}')
    receiver.deliver_remote(batch)

    assert recorder.events == [good]
    assert "unreadable event message" in caplog.text
    assert "unreadable event:" in caplog.text


async def test_external_broker_recovers_after_its_connections_are_killed(
    event_brokers: list[EventBroker], broker_backend: ModuleType, namespace: str
) -> None:
    """Kill both brokers' server connections for real; events flow again afterwards, a
    large one (over PostgreSQL's 8,000-byte NOTIFY limit) included."""
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker has no connections to kill")
    sender, receiver = event_brokers
    received: list[Event] = []
    arrived = anyio.Event()

    def on_event(event: Event) -> None:
        received.append(event)
        arrived.set()

    receiver.subscribe(on_event, [JobReleased])
    assert await broker_backend.kill_connections(namespace) >= 1
    event = JobReleased(
        job_id=uuid4(),
        scheduler_id="node",
        task_id="task",
        schedule_id=None,
        scheduled_fire_time=None,
        outcome=JobOutcome.error,
        exception_type="builtins.ValueError",
        exception_message="boom",
        exception_traceback="x" * 20_000,
    )
    with anyio.fail_after(20):
        # publish until the receiver is back: events sent while it reconnects are lost,
        # which costs latency only (the store is where schedulers coordinate)
        while not arrived.is_set():
            await sender.publish(event)
            with anyio.move_on_after(0.5):
                await arrived.wait()

    assert received[0] == event


async def test_a_listener_back_after_a_drop_tells_its_process_to_look_again(
    event_brokers: list[EventBroker], broker_backend: ModuleType, namespace: str
) -> None:
    # what others published while it was away is lost: BrokerReconnected says so, locally
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker has no connections to lose")
    recorder = EventRecorder()
    event_brokers[0].subscribe(recorder, {BrokerReconnected})
    assert recorder.events == []  # not on the first start

    assert await broker_backend.kill_connections(namespace) >= 1

    await recorder.wait_for(BrokerReconnected, within=20)


async def test_events_published_just_before_a_stop_still_reach_the_others(
    broker_backend: ModuleType, namespace: str, logger: logging.Logger
) -> None:
    # a stopping broker sends what it has queued before it closes (a scheduler that stops
    # right after its last job must not swallow that job's JobReleased)
    if not broker_backend.CROSS_PROCESS:
        pytest.skip("the local broker delivers within one process only")
    async with AsyncExitStack() as stack:
        sender, receiver = await stack.enter_async_context(
            broker_backend.open_event_brokers(namespace, 2)
        )
        await receiver.start(stack, logger)
        recorder = EventRecorder()
        receiver.subscribe(recorder)
        events = [TaskAdded(task_id=f"t{index}") for index in range(50)]
        async with AsyncExitStack() as sender_stack:
            await sender.start(sender_stack, logger)
            for event in events:
                await sender.publish(event)
        # the sender has stopped: whatever arrives now was sent while it stopped
        await recorder.wait_for(TaskAdded, len(events))
        assert recorder.events == events
