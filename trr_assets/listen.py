"""Listen: apply S3 Event Notifications from SQS as they come.

``events.receivers`` loops per queue (``events.queue_urls``), each in a
thread of its own with a connection of its own: receive (long polling,
10 messages a call, more calls without waiting while the queue has more, up
to ``events.batch_messages``), parse (``events``), apply the batch in one
transaction (``applying``), commit, and only then delete the messages
(``DeleteMessageBatch``, in a thread of its own while the receiver receives
the next batch; a run waits for its deletes before it ends). A crash between the commit and the delete
redelivers messages whose effect is already recorded: they come back stale
and change nothing.

While a batch is being applied, a keeper thread extends the messages'
visibility timeout each time half of it has passed, so a slow batch is not
handed to another receiver meanwhile. A message that is not a notification
is counted ``failed``, logged once (per process) and left on the queue for
its redrive policy; a batch whose transaction fails is counted ``failed``
and its messages come back after their visibility timeout.

A stop (SIGTERM through the worker or the CLI, ``stop.set()``) ends every
loop after its current step: a batch being applied is committed and
deleted; messages received but not applied yet are handed back at once
(visibility 0). ``once`` ends each loop when a receive comes back empty.

Once as it starts and then every hour, one receiver prunes the sequencer
entries older than ``events.sequencer_retention_days``
(``applying.prune_sequencers``) between two batches.
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from trr_assets import applying, db, events, logs, queues, storage
from trr_assets.config import Settings
from trr_assets.errors import ConfigError, MessageError, TrrAssetsError, one_line
from trr_assets.queues import Message
from trr_assets.storage import heads as storage_heads

log = structlog.get_logger()

FAILED_IDS_REMEMBERED = 10_000  # message ids already logged as unparseable (each is logged once)
LAG_SAMPLES = 100_000  # lags kept for the percentiles of a run
PRUNE_EVERY_SECONDS = 3600.0  # how often a listener prunes old sequencer entries (and once as it starts)


@dataclass(frozen=True)
class ListenReport:
    """Counts of a listen run. Every record received (and every message that
    could not be parsed) is counted once in applied, stale, ignored, skipped
    or failed; ``received`` is their sum."""

    received: int
    applied: int
    stale: int
    ignored: int
    failed: int
    skipped: int
    messages: int  # messages received
    deleted: int  # messages deleted after their batch committed
    skipped_by_reason: dict[str, int]
    rows: dict[str, int]
    lag_seconds: dict[str, float]  # eventTime to commit: p50, p99, max of the applied events
    failures: tuple[str, ...] = ()  # one line per receive or batch that failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "applied": self.applied,
            "stale": self.stale,
            "ignored": self.ignored,
            "failed": self.failed,
            "skipped": self.skipped,
            "messages": self.messages,
            "deleted": self.deleted,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "rows": dict(self.rows),
            "lag_seconds": dict(self.lag_seconds),
            "failures": list(self.failures),
        }


class _Tally:
    """The run's counts, added to by every receiver."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcome = applying.Outcome()
        self.failed = self.messages = self.deleted = 0
        self.errors: list[str] = []
        self.failed_ids: dict[str, None] = {}  # insertion-ordered set, oldest dropped first

    def add(self, outcome: applying.Outcome, *, failed: int = 0, messages: int = 0, deleted: int = 0) -> None:
        with self.lock:
            lags = (self.outcome.lags + outcome.lags)[-LAG_SAMPLES:]
            total = self.outcome + outcome
            self.outcome = applying.Outcome(total.applied, total.stale, total.ignored, total.skipped,
                                            total.skipped_by_reason, total.rows, lags)
            self.failed += failed
            self.messages += messages
            self.deleted += deleted

    def first_failure(self, message_id: str) -> bool:
        """Whether this unparseable message is seen for the first time (then log it)."""
        with self.lock:
            if message_id in self.failed_ids:
                return False
            self.failed_ids[message_id] = None
            if len(self.failed_ids) > FAILED_IDS_REMEMBERED:
                del self.failed_ids[next(iter(self.failed_ids))]
            return True

    def error(self, line: str) -> None:
        with self.lock:
            self.errors.append(line)

    def report(self) -> ListenReport:
        with self.lock:
            o = self.outcome
            return ListenReport(
                received=o.applied + o.stale + o.ignored + o.skipped + self.failed,
                applied=o.applied, stale=o.stale, ignored=o.ignored, failed=self.failed, skipped=o.skipped,
                messages=self.messages, deleted=self.deleted, skipped_by_reason=dict(o.skipped_by_reason),
                rows=dict(o.rows), lag_seconds=_percentiles(o.lags), failures=tuple(self.errors),
            )


def _percentiles(lags: Sequence[float]) -> dict[str, float]:
    if not lags:
        return {}
    ordered = sorted(lags)

    def at(share: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1], 3)}


@dataclass(frozen=True)
class _Queue:
    url: str
    client: Any
    visibility_seconds: int


class Listener:
    """Receivers for every configured queue, sharing one S3 client, one
    HEAD pool and one connection pool."""

    def __init__(
        self,
        settings: Settings,
        *,
        s3: Any = None,
        stop: threading.Event | None = None,
        once: bool = False,
        sqs: Callable[[str], Any] | None = None,
        observe_event: Callable[..., None] | None = None,
    ) -> None:
        if not settings.events.queue_urls:
            raise ConfigError("config: events.queue_urls is empty; listen needs at least one SQS queue URL")
        self.settings = settings
        self.stop = stop or threading.Event()
        self.once = once
        self._s3 = s3
        self._sqs: Callable[[str], Any] = sqs or functools.partial(queues.make_client, settings)
        self.tally = _Tally()
        # Called once per event outcome, as ``Metrics.observe_event(outcome, lag_seconds=...)``
        # is: the worker passes its metrics' method; the command passes nothing.
        self._observe_event = observe_event
        self._deleter: ThreadPoolExecutor | None = None  # set while running
        self._next_prune = 0.0  # time.monotonic() of the next pruning
        self._pruning = threading.Lock()  # held by the receiver pruning; the others go on

    def run(self) -> ListenReport:
        """Receive and apply until stopped (or, with ``once``, until the queues are empty)."""
        started = time.monotonic()
        ev = self.settings.events
        found = [self._queue(url) for url in dict.fromkeys(ev.queue_urls)]  # a missing queue fails here, once
        s3 = self._s3 or storage.make_client(self.settings.s3)
        loops = len(found) * ev.receivers
        pool = db.make_pool(self.settings.database, name="trr-assets listen", min_size=1, max_size=loops,
                            connect_workers=1)
        log.info("listen_started", queues=[queues.queue_name(q.url) for q in found], receivers=ev.receivers,
                 once=self.once)
        try:
            db.open_pool(pool, connections=1, timeout_seconds=self.settings.database.connect_timeout_seconds)
            with (ThreadPoolExecutor(self.settings.s3.head_concurrency, thread_name_prefix="trr-head") as pool_heads,
                  storage_heads.for_client(s3, self.settings.s3) as native,
                  ThreadPoolExecutor(loops, thread_name_prefix="trr-listen-delete") as deleter):
                heads = applying.Heads(pool_heads, native)
                self._deleter = deleter  # deletes of committed batches, off the receivers' path
                threads = [  # each with the caller's log context (the worker's job)
                    threading.Thread(target=contextvars.copy_context().run, args=(self._loop, q, s3, pool, heads),
                                     daemon=True, name=f"trr-listen-{queues.queue_name(q.url)}-{i}")
                    for q in found for i in range(ev.receivers)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
        finally:
            pool.close()
        report = self.tally.report()
        log.info("listen_done", duration_seconds=round(time.monotonic() - started, 3),
                 **{k: v for k, v in report.as_dict().items() if k != "failures"})
        return report

    def _queue(self, url: str) -> _Queue:
        client = self._sqs(url)
        own = queues.visibility_timeout_seconds(client, url)
        return _Queue(url, client, self.settings.events.visibility_timeout_seconds or own)

    # -- one receiver

    def _loop(self, q: _Queue, s3: Any, pool: Any, heads: applying.Heads) -> None:
        while not self.stop.is_set():
            self._prune(pool)
            try:
                batch = self._receive(q)
            except TrrAssetsError as exc:
                self._failed_step(q, exc)
                continue
            if not batch:
                if self.once:
                    return
                continue
            if self.stop.is_set():  # received after the stop: back to the queue at once
                self._hand_back(q, batch)
                return
            try:
                self._handle(q, batch, s3, pool, heads)
            except Exception as exc:  # a bug: keep the receiver, keep the messages on the queue
                log.error("listen_batch_crashed", queue=queues.queue_name(q.url), exc_info=True)
                self.tally.error(_line(exc))

    def _prune(self, pool: Any) -> None:
        """Prune old sequencer entries when it is time, in one receiver."""
        if time.monotonic() < self._next_prune or not self._pruning.acquire(blocking=False):
            return
        try:
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
            days = self.settings.events.sequencer_retention_days
            with pool.connection() as conn:
                pruned = applying.prune_sequencers(conn, retention_days=days)
            if pruned:
                log.info("events_sequencers_pruned", count=pruned, retention_days=days)
        except TrrAssetsError as exc:  # the next hour tries again; applying events goes on
            log.warning("events_sequencers_prune_failed", error=_line(exc))
        finally:
            self._pruning.release()

    def _failed_step(self, q: _Queue, exc: TrrAssetsError) -> None:
        log.error("listen_receive_failed", queue=queues.queue_name(q.url), error=_line(exc))
        self.tally.error(_line(exc))
        if self.once:
            self.stop.set()
        else:
            self.stop.wait(min(5.0, max(1.0, self.settings.events.wait_seconds / 4)))

    def _receive(self, q: _Queue) -> list[Message]:
        """A batch: one long poll, then more receives without waiting while they come back full."""
        ev = self.settings.events
        batch: list[Message] = []
        wait = ev.wait_seconds
        while len(batch) < ev.batch_messages and not self.stop.is_set():
            got = queues.receive(q.client, q.url, max_messages=min(queues.MAX_MESSAGES, ev.batch_messages - len(batch)),
                                 wait_seconds=wait, visibility_timeout_seconds=q.visibility_seconds)
            batch.extend(got)
            if len(got) < queues.MAX_MESSAGES:
                break
            wait = 0
        return batch

    def _handle(self, q: _Queue, batch: list[Message], s3: Any, pool: Any, heads: applying.Heads) -> None:
        parsed: list[Message] = []
        found: list[events.Event] = []
        failed = tests = 0
        for message in batch:
            try:
                content = events.parse_message(message.body)
            except MessageError as exc:
                failed += 1
                if self.tally.first_failure(message.id):
                    log.warning("listen_message_unparseable", queue=queues.queue_name(q.url), message_id=message.id,
                                receive_count=message.receive_count, error=_line(exc))
                continue
            parsed.append(message)
            found.extend(content.events)
            tests += content.test_event
        outcome = applying.Outcome(ignored=tests)
        if found:
            keeper = _Keeper(q, parsed)
            try:
                with pool.connection() as conn:
                    outcome += applying.apply(conn, s3, found, settings=self.settings, heads=heads)
            except TrrAssetsError as exc:
                log.error("listen_batch_failed", queue=queues.queue_name(q.url), messages=len(parsed),
                          events=len(found), error=_line(exc))
                self.tally.error(_line(exc))
                self.tally.add(applying.Outcome(), failed=failed + len(found), messages=len(batch))
                return  # the messages come back after their visibility timeout
            finally:
                keeper.close()
        self.tally.add(outcome, failed=failed, messages=len(batch))
        self._observe(outcome, failed=failed)
        if parsed:  # committed: the receiver goes on receiving while its messages are deleted
            assert self._deleter is not None
            self._deleter.submit(contextvars.copy_context().run, self._delete, q, parsed)
        log.info("listen_batch_applied", queue=queues.queue_name(q.url), messages=len(batch), events=len(found),
                 applied=outcome.applied, stale=outcome.stale, ignored=outcome.ignored, skipped=outcome.skipped,
                 failed=failed, rows=outcome.rows, lag_max_seconds=round(max(outcome.lags, default=0.0), 3))

    def _observe(self, outcome: applying.Outcome, *, failed: int) -> None:
        """Hand a committed batch's outcomes (and each applied event's lag) to the observer."""
        observe = self._observe_event
        if observe is None:
            return
        counts = {"applied": outcome.applied, "stale": outcome.stale, "ignored": outcome.ignored,
                  "skipped": outcome.skipped, "failed": failed}
        for _ in range(sum(counts.values())):
            observe("received")
        lags = outcome.lags[: outcome.applied]
        for lag in lags:
            observe("applied", lag_seconds=lag)
        counts["applied"] -= len(lags)  # applied events with no eventTime: counted, no lag
        for name, count in counts.items():
            for _ in range(count):
                observe(name)

    def _delete(self, q: _Queue, messages: list[Message]) -> None:
        try:
            refused = queues.delete(q.client, q.url, messages)
        except TrrAssetsError as exc:  # committed: a redelivery is stale, so this only costs a receive
            log.warning("listen_delete_failed", queue=queues.queue_name(q.url), error=_line(exc))
            refused = [m.id for m in messages]
        self.tally.add(applying.Outcome(), deleted=len(messages) - len(refused))

    def _hand_back(self, q: _Queue, messages: list[Message]) -> None:
        try:
            queues.change_visibility(q.client, q.url, messages, 0)
        except TrrAssetsError as exc:  # they come back after their visibility timeout anyway
            log.warning("listen_hand_back_failed", queue=queues.queue_name(q.url), error=_line(exc))
        log.info("listen_handed_back", queue=queues.queue_name(q.url), messages=len(messages))


class _Keeper:
    """Extends the visibility of a batch's messages each time half of it has
    passed, until closed."""

    def __init__(self, q: _Queue, messages: list[Message]) -> None:
        self._q = q
        self._messages = messages
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trr-listen-keeper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        period = max(1.0, self._q.visibility_seconds / 2)
        while not self._done.wait(period):
            try:
                queues.change_visibility(self._q.client, self._q.url, self._messages, self._q.visibility_seconds)
                log.info("listen_visibility_extended", queue=queues.queue_name(self._q.url),
                         messages=len(self._messages), timeout_seconds=self._q.visibility_seconds)
            except TrrAssetsError as exc:
                log.warning("listen_visibility_failed", queue=queues.queue_name(self._q.url), error=_line(exc))

    def close(self) -> None:
        self._done.set()
        self._thread.join()


def _line(exc: BaseException) -> str:
    return logs.scrub(one_line(exc))


def run(settings: Settings, *, once: bool = False, stop: threading.Event | None = None, s3: Any = None) -> ListenReport:
    """``trr-assets listen [--once]``."""
    return Listener(settings, once=once, stop=stop, s3=s3).run()
