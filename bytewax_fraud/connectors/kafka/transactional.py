"""Predictions and dead letters written exactly once: Kafka transactions per state partition.

Each state partition owns one producer with a stable `transactional.id`
(`<prefix>-<partition>`), so the broker fences any other process that writes
for the partition: a restarted, rescaled or stale one. A transaction holds
everything the partition wrote since the last commit. Its outputs reach this
sink in input order, so after any batch "all the outputs of the partition's
input offsets up to N" is a fact that can be committed: the same transaction
commits it as the consumer-group offset N + 1 of the input partition (group
`<prefix>`; other sources, such as the control topic, ride in that offset's
metadata).

A transaction commits when Bytewax snapshots the partition (at each epoch close,
`FRAUD_SNAPSHOT_INTERVAL`): the snapshot must never run ahead of what Kafka
holds, or a crash right after it would lose the epoch's outputs. With
`FRAUD_KAFKA_COMMIT_INTERVAL`, every open transaction also commits at each
multiple of that interval in wall-clock time (`CommitGroup`), on a thread of its
own, while the worker goes on (what it writes meanwhile is held and opens the
next transaction). A read_committed reader then
waits about that interval, not an epoch, and not for the epoch's drain. The
committed progress may then be ahead of Bytewax's snapshot; a resume skips those
replayed outputs, as it skips any committed ones.

librdkafka cannot resume a transaction a dead process left open:
`init_transactions` aborts it. So at start a partition reads its committed
progress back and skips the replayed outputs at or below it; the outbox
(state/outbox.py) re-emits the rest byte for byte, and they are written again.

Produce is asynchronous; delivery is awaited only by `commit_transaction`.
Errors, by librdkafka's classes: retriable, the call is made again (until the
brokers have been gone for `transaction.timeout.ms`); `txn_requires_abort`, the
transaction is aborted and its messages are produced again in a new one;
fatal (fenced included), the run stops with one line and writes nothing more.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from bytewax_fraud.connectors.kafka.config import masked
from bytewax_fraud.connectors.kafka.errors import (
    KafkaBrokersGone,
    KafkaDeliveryError,
    KafkaFenced,
    KafkaSetupError,
)
from bytewax_fraud.connectors.kafka.sinks import Headers, dead_letter_message
from bytewax_fraud.records import DeadLetter, ScoredBatch

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What the sink is given: a partition's scored batch or one of its dead letters.
Output = ScoredBatch | DeadLetter
_Message = tuple[str, bytes | None, bytes | None, Headers | None]


#: How long one transactional call may block (librdkafka's own timeout, in seconds).
_CALL_TIMEOUT_S = 30.0
#: A call still running this long after it began is hung (see `_check_not_hung`).
_HUNG_CALL_S = _CALL_TIMEOUT_S + 10.0


def part_name(partition: int) -> str:
    """The sink partition of a state partition (zero-padded: Bytewax orders them by name)."""
    return f"{partition:05d}"


@dataclass(frozen=True)
class Progress:
    """What a partition's committed transactions cover: the largest input offset per source."""

    offsets: dict[str, int]

    def covers(self, source: str, offset: int) -> bool:
        """Whether the output of this input was committed already (a replay must skip it)."""
        return offset <= self.offsets.get(source, -1)

    def to_offset(self, topic: str, partition: int) -> TopicPartition:
        """As the consumer-group offset of the input partition (next offset, others in metadata)."""
        others = {k: v for k, v in self.offsets.items() if k != topic}
        nxt = self.offsets.get(topic, -1) + 1
        return TopicPartition(topic, partition, nxt, metadata=json.dumps(others, sort_keys=True))

    @classmethod
    def from_offset(cls, committed: TopicPartition) -> Progress:
        """Read back what `to_offset` committed (nothing committed: no progress)."""
        offsets: dict[str, int] = {}
        if committed.metadata:
            offsets.update({str(k): int(v) for k, v in json.loads(committed.metadata).items()})
        if committed.offset >= 0:
            offsets[committed.topic] = committed.offset - 1
        return cls(offsets)


def _classify(err: KafkaError, what: str, txn_id: str) -> None:
    """Raise the one-line error for a fatal or fenced `err`; return for the others."""
    code = err.code()
    fenced = code in (
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    )
    if fenced or (err.fatal() and "fenced" in err.str().lower()):
        raise KafkaFenced(
            f"{what}: transactional.id {txn_id!r} was taken over by another process (a restarted,"
            " rescaled or replacement job), so this one is fenced and stops; nothing it had not"
            " committed is visible to read_committed consumers. Fix: make sure only one job runs"
            " for these topics (FRAUD_KAFKA_TRANSACTIONAL_ID)"
        )
    if err.fatal() or code == KafkaError._FATAL:
        raise KafkaDeliveryError(
            f"{what}: fatal Kafka transaction error for transactional.id {txn_id!r}:"
            f" {err.str()}. The run stops; resume with the recovery directory"
        )


class _TransactionalPartition(StatefulSinkPartition[Output, None]):
    """One state partition's producer: produce in a transaction, commit at each snapshot."""

    def __init__(
        self,
        producer_config: dict[str, Any],
        consumer_config: dict[str, Any],
        topics: tuple[str, str, str],
        partition: int,
        txn_id: str,
        failed: threading.Event,
        group: CommitGroup,
        commit_interval: float | None = None,
    ) -> None:
        self._input, self._predictions, self._dead_letters = topics
        self._failed = failed
        self._group = group
        self._partition = partition
        self._txn_id = txn_id
        # librdkafka caps a transactional producer's message.timeout.ms at
        # transaction.timeout.ms (60 s by default): how long the brokers may be gone.
        self._patience = float(producer_config.get("transaction.timeout.ms", 60_000)) / 1000
        config = {**producer_config, "transactional.id": txn_id}
        try:
            self._producer = Producer(config)
            self._reader = Consumer(
                {
                    **consumer_config,
                    "group.id": txn_id.rsplit("-", 1)[0],
                    "isolation.level": "read_committed",
                    "enable.auto.commit": False,
                }
            )
        except KafkaException as exc:
            raise KafkaSetupError(
                f"invalid Kafka producer configuration {masked(config)}: {exc.args[0]};"
                " fix FRAUD_KAFKA_PROPERTIES or FRAUD_KAFKA_CONFIG_FILE"
            ) from exc
        #: The transactional call running now (what, since when), watched by the worker.
        self._in_call: tuple[str, float] | None = None
        # Fences every earlier producer of this id and aborts what it left open; only then
        # is the committed progress final.
        self._retrying("starting the transactions", lambda: self._producer.init_transactions(30))
        self.fence = self._committed()
        self._seen = dict(self.fence.offsets)
        #: The open transaction's messages, for producing them again after an abort.
        self._pending: list[_Message] = []
        self._open = False
        #: Guards the transaction's state between the worker and the commit threads.
        self._lock = threading.Lock()
        #: A commit running on a thread of the group, and what the worker wrote meanwhile
        #: (with the progress it covers): it opens the next transaction once that commit ends.
        self._committing: Future[None] | None = None
        self._held: list[_Message] = []
        self._held_seen: dict[str, int] = {}
        self._closing = False
        # Only once built: a failed start leaves nothing in the group.
        group.add(self, commit_interval)

    def _check(self, err: KafkaError, what: str) -> None:
        """Raise for a fatal `err` (naming its cause), else return."""
        if err.code() == KafkaError._FATAL:
            # produce() only says "Local: Fatal error"; the transactional API gives the cause.
            try:
                self._producer.abort_transaction(1)
            except KafkaException as exc:
                err = exc.args[0]
        if err.fatal() or err.code() == KafkaError._FATAL:
            self._reader.close()  # nothing more is read or written by this process
        _classify(err, what, self._txn_id)

    def _committed(self) -> Progress:
        tp = TopicPartition(self._input, self._partition)
        (got,) = self._retrying(
            "reading the committed progress", lambda: self._reader.committed([tp], 30)
        )
        return Progress.from_offset(got)

    def _retrying(self, what: str, call: Callable[[], T]) -> T:
        """Make `call` until it succeeds; retriable errors are retried while brokers may return."""
        deadline = time.monotonic() + self._patience
        warned = False
        while True:
            self._in_call = (what, time.monotonic())
            try:
                return call()
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self._check(err, what)
                if err.txn_requires_abort():
                    raise
                if not err.retriable():
                    raise KafkaDeliveryError(
                        f"{what} for transactional.id {self._txn_id!r} failed: {err.str()}."
                        " The run stops; fix the cause, then resume with the recovery directory"
                    ) from exc
                if not warned:
                    log.warning("%s for %s: %s; retrying", what, self._txn_id, err.str())
                    warned = True
                if time.monotonic() > deadline:
                    raise KafkaBrokersGone(
                        f"{what} for transactional.id {self._txn_id!r} failed for"
                        f" {self._patience:.0f} s (transaction.timeout.ms): {err.str()}. Fix: bring"
                        " the brokers back (check KAFKA_BOOTSTRAP_SERVERS), then restart: the job"
                        " resumes from its last snapshot and writes each output once"
                    ) from exc
                time.sleep(0.2)
            finally:
                self._in_call = None

    def _check_not_hung(self) -> None:
        """Raise if a transactional call has run far past its own timeout (a librdkafka hang).

        After a broker outage, librdkafka's `send_offsets_to_transaction` can wait for a
        group coordinator forever, ignoring its timeout (librdkafka issues #5456, #5511);
        the worker, which does not wait for commits, checks here and stops the run.
        """
        running = self._in_call
        if running is None:
            return
        what, since = running
        took = time.monotonic() - since
        if took > _HUNG_CALL_S:
            raise KafkaBrokersGone(
                f"{what} for transactional.id {self._txn_id!r} has not returned in {took:.0f} s,"
                f" past its own {_CALL_TIMEOUT_S:.0f} s timeout: librdkafka can hang there after"
                " a broker outage (librdkafka issues #5456, #5511). The run stops; restart it: the"
                " job resumes from its last snapshot and writes each output once"
            )

    def _produce(self, msg: _Message) -> None:
        topic, key, value, headers = msg
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.05)
            except KafkaException as exc:
                self._check(exc.args[0], "producing")
                raise KafkaDeliveryError(
                    f"a message to {topic!r} was refused: {exc.args[0].str()}; the run stops"
                ) from exc

    def _begin(self) -> None:
        if not self._open:
            self._retrying("beginning a transaction", self._producer.begin_transaction)
            self._open = True

    def write_batch(self, values: list[Output]) -> None:
        try:
            with self._lock:
                self._write(values)
        except BaseException:
            self._failed.set()
            raise

    def _write(self, values: list[Output]) -> None:
        busy = self._committing
        if busy is not None and busy.done():
            busy.result()  # a commit that ended leaves `_committing` unset unless it failed
        elif busy is not None:
            self._check_not_hung()
        holding = busy is not None
        if holding:  # the producer is committing: these wait for the next transaction
            seen, pending = self._held_seen, self._held
        else:
            self._begin()
            seen, pending = self._seen, self._pending
        start = len(pending)
        fence, topic = self.fence, self._predictions
        for value in values:
            if not isinstance(value, ScoredBatch):
                self._dead_letter(value, pending, seen)
                continue
            # A partition's scoring step hands on all it output for its input as one item
            # (its dead letters inside): with nothing of that input still on its way here,
            # the progress may be committed after any item.
            source = self._input
            offsets = value.offsets.tolist()
            if offsets and not fence.covers(source, offsets[-1]):
                if fence.covers(source, offsets[0]):  # the first batch after a resume
                    pending += [
                        (topic, user.encode(), line, None)
                        for user, line, off in zip(
                            value.user_ids, value.lines, offsets, strict=True
                        )
                        if not fence.covers(source, off)
                    ]
                else:
                    pending += [
                        (topic, user.encode(), line, None)
                        for user, line in zip(value.user_ids, value.lines, strict=True)
                    ]
                seen[source] = max(seen.get(source, -1), offsets[-1])
            for dead in value.dead_letters:
                self._dead_letter(dead, pending, seen)
        if not holding:
            self._produce_from(start)

    def _dead_letter(self, dead: DeadLetter, pending: list[_Message], seen: dict[str, int]) -> None:
        o = dead.origin
        if self.fence.covers(o.source, o.offset):
            return  # a replay of what was committed
        key, raw, headers = dead_letter_message(dead)
        pending.append((self._dead_letters, key, raw, headers))
        seen[o.source] = max(seen.get(o.source, -1), o.offset)

    def _produce_from(self, start: int) -> None:
        """Produce the open transaction's messages from `start` on."""
        pending, produce = self._pending, self._producer.produce
        for i in range(start, len(pending)):
            topic, key, value, headers = pending[i]
            try:
                produce(topic, value, key, headers=headers)
            except (BufferError, KafkaException):  # queue full, or one bad message
                self._produce(pending[i])
        self._producer.poll(0)

    def start_commit(self) -> Future[None] | None:
        """Commit the open transaction on a thread of the group; the worker goes on.

        Returns the commit running (a new one, or one started earlier), or None when
        nothing is open.
        """
        with self._lock:
            if self._committing is None and self._open and not self._closing:
                self._committing = self._group.submit(self._commit_and_reopen)
            return self._committing

    def _commit_and_reopen(self) -> None:
        # `self.commit` is looked up here: tests wrap it to kill the process around it.
        self.commit()
        with self._lock:
            held, self._held = self._held, []
            seen = self._seen
            for source, offset in self._held_seen.items():
                seen[source] = max(seen.get(source, -1), offset)
            self._held_seen = {}
            if held:
                self._begin()
                self._pending = held
                self._produce_from(0)
            self._committing = None

    def wait_for_commits(self) -> None:
        """Wait until no commit runs in the background; raise the error of one that failed."""
        while True:
            with self._lock:
                busy = self._committing
            if busy is None:
                return
            try:
                busy.result(timeout=1.0)
            except TimeoutError:
                self._check_not_hung()

    @property
    def is_open(self) -> bool:
        """Whether a transaction is open (something was written since the last commit)."""
        return self._open

    def commit(self) -> None:
        """Commit what was produced since the last commit, with the progress it covers.

        Runs on a thread of the group (`start_commit`), or on the worker while no
        commit thread can run (`close`); the worker holds what it writes meanwhile.
        """
        if not self._open:
            return
        progress = Progress(dict(self._seen))
        while True:
            try:
                self._send_and_commit(progress)
                break
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.txn_requires_abort():
                    raise
                log.warning("transaction of %s aborted (%s); writing it again", self._txn_id, err)
                self._retrying("aborting", lambda: self._producer.abort_transaction(30))
                self._retrying("beginning a transaction", self._producer.begin_transaction)
                for msg in self._pending:
                    self._produce(msg)
        self._pending = []
        self._open = False
        self.fence = progress

    def _send_and_commit(self, progress: Progress) -> None:
        offsets = [progress.to_offset(self._input, self._partition)]
        group = self._reader.consumer_group_metadata()
        # Each step is retried on its own: a commit that timed out may be retried, but the
        # offsets must not be sent twice.
        self._retrying(
            "sending the progress",
            lambda: self._producer.send_offsets_to_transaction(offsets, group, _CALL_TIMEOUT_S),
        )
        self._retrying("committing", lambda: self._producer.commit_transaction(_CALL_TIMEOUT_S))

    def snapshot(self) -> None:
        try:
            self._group.commit_open()
        except BaseException:
            self._failed.set()
            raise

    def close(self) -> None:
        # Bytewax closes every sink partition while unwinding an error, and a second error
        # there aborts the process before the first is reported: once a partition of this
        # process failed, the others (all fenced alike, say) commit nothing more. What they
        # left open is aborted by the next run's init_transactions.
        if self._failed.is_set():
            return
        self._group.remove(self)
        with self._lock:
            self._closing = True  # no commit starts on a thread of the group any more
        try:
            self.wait_for_commits()
            self.commit()
        except BaseException:
            self._failed.set()
            raise
        self._reader.close()
        self._producer.flush(5)


class CommitGroup:
    """The transactional partitions one worker holds, and the threads that commit them.

    Bytewax snapshots a worker's sink partitions one after another once an epoch
    is closed: every write of the epoch has been made and none of the next (the
    input emits nothing of the next epoch until the outputs finished this one).
    Each commit takes two or three broker round trips (the progress to the group
    coordinator, then the end of the transaction): four partitions committed one
    by one held the worker, and so the input, ~45 ms per epoch on a local broker.
    The first snapshot of an epoch commits every open transaction of the worker
    at once, one thread each (librdkafka waits without the GIL), and waits for
    all; the later snapshots find theirs committed. A failure is raised as the
    partition's own commit would raise it.

    With a commit interval, a ticker thread also starts the commit of every open
    transaction of the group at each multiple of the interval in wall-clock time,
    whether or not the worker writes again (the last outputs before a pause in the
    input are not left for the snapshot). A read_committed reader can read a
    partition of the predictions only up to the first record of a transaction still
    open there, and every state partition writes to every partition of the
    predictions: commits at the same instants, in every worker and process (with
    synchronised clocks), keep one partition's open transaction from hiding the
    others' committed records.
    """

    def __init__(self) -> None:
        """An empty group; partitions add themselves when built."""
        self._parts: list[_TransactionalPartition] = []
        self._ticker: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopped = False

    def add(self, part: _TransactionalPartition, interval: float | None) -> None:
        """Commit `part` with the others from now on, and every `interval` seconds if set."""
        self._parts = [*self._parts, part]
        if interval is not None and self._ticker is None:
            self._ticker = threading.Thread(
                target=self._tick, args=(interval,), name="fraud-commit-ticker", daemon=True
            )
            self._ticker.start()

    def remove(self, part: _TransactionalPartition) -> None:
        """`part` is closed; the threads end with the last one."""
        self._parts = [p for p in self._parts if p is not part]
        if not self._parts:
            self._stopped = True
            self._wake.set()

    def submit(self, commit: Callable[[], None]) -> Future[None]:
        """Run `commit` on a thread of its own; its future holds the outcome.

        A daemon thread, not a pool's: a call that librdkafka never returns from
        (`_check_not_hung`) must not keep the process from exiting once the run stops.
        """
        done: Future[None] = Future()

        def run() -> None:
            done.set_running_or_notify_cancel()
            try:
                commit()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for it
                done.set_exception(exc)
            else:
                done.set_result(None)

        threading.Thread(target=run, name="fraud-commit", daemon=True).start()
        return done

    def _tick(self, interval: float) -> None:
        while not self._stopped:
            now = time.time()
            if self._wake.wait(interval - now % interval):
                return  # the last partition closed
            for part in self._parts:
                part.start_commit()

    def commit_open(self) -> None:
        """Commit every open transaction of the group; raise the first failure, in order.

        Background commits are waited for first: what their partitions held
        meanwhile opened the transactions committed here.
        """
        parts = self._parts
        for part in parts:
            part.wait_for_commits()
        for part in parts:
            part.start_commit()
        for part in parts:
            part.wait_for_commits()


class KafkaTransactionalSink(FixedPartitionedSink[Output, None]):
    """Both outputs of every state partition, written exactly once in Kafka transactions.

    Items are `(routing key, ScoredBatch | DeadLetter)`; the key names the state
    partition (`partitioning.routing_key`), which names the sink partition.
    """

    def __init__(
        self,
        partitions: int,
        topics: tuple[str, str, str],
        producer_config: dict[str, Any],
        consumer_config: dict[str, Any],
        txn_prefix: str,
        commit_interval: float | None = None,
    ) -> None:
        """Write for `partitions` state partitions.

        Args:
            partitions: The number of state partitions (= input partitions).
            topics: The input, predictions and dead-letter topics.
            producer_config: Properties of the producers (a transactional.id is added).
            consumer_config: Properties of the client that reads the committed progress.
            txn_prefix: `transactional.id` = `<txn_prefix>-<partition>`; also the group.
            commit_interval: Also commit every open transaction, in the background, at
                each multiple of this many seconds in wall-clock time (None: only at
                snapshots).
        """
        self.partitions = partitions
        self.topics = topics
        self._producer_config = producer_config
        self._consumer_config = consumer_config
        self.txn_prefix = txn_prefix
        self.commit_interval = commit_interval
        #: Set once a partition of this process raised (see `_TransactionalPartition.close`).
        self._failed = threading.Event()
        #: Each worker thread's partitions, committed together (`CommitGroup`).
        self._groups: dict[int, CommitGroup] = {}
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return [part_name(p) for p in range(self.partitions)]

    def part_fn(self, item_key: str) -> int:
        # Routing keys are "p<partition>.<salt>" (partitioning.routing_key).
        return int(item_key[1:].split(".", 1)[0])

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> _TransactionalPartition:
        p = int(for_part)
        with self._lock:  # Bytewax builds a partition on the worker thread that holds it
            group = self._groups.setdefault(threading.get_ident(), CommitGroup())
        return _TransactionalPartition(
            self._producer_config,
            self._consumer_config,
            self.topics,
            p,
            f"{self.txn_prefix}-{p}",
            self._failed,
            group,
            self.commit_interval,
        )
