"""Input that vanished under the job: detect it, then stop or (if asked) skip and count it.

A resumed run continues each input partition at the offset its last snapshot
recorded. That offset can be gone: retention or `DeleteRecords` removed it
(it is below the partition's earliest offset), or the topic was deleted and
re-created (a new topic id; its offsets number other messages) or truncated
(the offset is past the end). librdkafka's `auto.offset.reset` would jump to
another offset without a word, so the source sets it to `error` and decides
here instead:

- below the earliest offset: `FRAUD_ON_DATA_LOSS=fail` (default) stops with
  `InputDataLost` naming the gap; `skip` continues at the earliest offset,
  logs the gap and counts it (`fraud_input_lost_messages`);
- a re-created topic or an offset past the end always stops: the state's
  replay fences hold offsets of the old messages, so reading the new ones
  from the start would drop or misattribute events.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from bytewax_fraud.connectors.kafka.errors import InputDataLost

log = logging.getLogger(__name__)

OnDataLoss = Literal["fail", "skip"]

#: Where the input topic's id is kept, next to the state it belongs to.
IDENTITY_FILE = "input-topics.json"

_NEW_STATE = (
    "start over with new (empty) FRAUD_STATE_DIR and FRAUD_RECOVERY_DIR, or restore the"
    " topic's messages from a backup or mirror with the same offsets"
)


@dataclass(frozen=True)
class Gap:
    """Input the job had not read and that is no longer in the partition."""

    topic: str
    partition: int
    expected: int  # the offset the job must continue from
    earliest: int  # the partition's earliest retained offset

    @property
    def lost(self) -> int:
        """How many messages are gone."""
        return self.earliest - self.expected

    def describe(self) -> str:
        """What was lost, in words."""
        return (
            f"topic {self.topic!r} partition {self.partition}: the job must continue at offset"
            f" {self.expected}, but the earliest offset still in the partition is"
            f" {self.earliest}; {self.lost:,} message(s) were deleted (retention or"
            " DeleteRecords) before the job read them"
        )


def resume_offset(
    topic: str, partition: int, expected: int, low: int, high: int | None, policy: OnDataLoss
) -> tuple[int, Gap | None]:
    """Where to continue a partition, given its watermarks (`high` None: not trusted).

    Returns:
        The offset to read next, and the gap skipped (None when nothing is lost).

    Raises:
        InputDataLost: Messages are gone and the policy is `fail`, or the offset
            is past the partition's end (a truncated or re-created topic).
    """
    if expected < low:
        gap = Gap(topic, partition, expected, low)
        if policy == "skip":
            return low, gap
        raise InputDataLost(
            f"{gap.describe()}. Fix: to accept the loss and continue at offset {low}, restart"
            " with FRAUD_ON_DATA_LOSS=skip (the gap is logged and counted in"
            " fraud_input_lost_messages); to keep it, re-produce the missing messages from their"
            " source into a new topic and " + _NEW_STATE
        )
    if high is not None and expected > high:
        raise InputDataLost(
            f"topic {topic!r} partition {partition}: the job must continue at offset {expected},"
            f" but the partition ends at offset {high}: the topic was truncated or deleted and"
            f" re-created, so its offsets now number other messages. Fix: {_NEW_STATE}"
        )
    return expected, None


def topic_id(admin: AdminClient, topic: str, timeout: float = 15.0) -> str | None:
    """The broker's id of `topic` (Kafka 2.8+), or None where the broker has none."""
    try:
        desc = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
        tid = desc.result(timeout).topic_id
    except (KafkaException, AttributeError, ValueError) as exc:
        log.info("cannot read the id of topic %r (%s): re-creation is not detected", topic, exc)
        return None
    text = str(tid) if tid is not None else ""
    return text if text.strip("A=") else None  # the all-zero id means "no id"


def check_topic_identity(state_dir: Path, topic: str, current: str | None) -> None:
    """Fail if `topic` was deleted and re-created since the state in `state_dir` first read it.

    The first run records the topic's id in `state_dir/input-topics.json`; later
    runs compare. A re-created topic numbers its messages from 0 again, which
    the state's offsets (replay fences, snapshots) would misread.

    Raises:
        InputDataLost: The topic's id changed.
    """
    if current is None:
        return
    path = state_dir / IDENTITY_FILE
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    before = known.get(topic)
    if before is None:
        known[topic] = current
        tmp = path.with_name(f"{IDENTITY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=2) + "\n")
        tmp.replace(path)
        return
    if before != current:
        raise InputDataLost(
            f"input topic {topic!r} was deleted and re-created since the state in {state_dir}"
            f" first read it (topic id {before}, now {current}): every message the old topic"
            " held is gone, and the new topic's offsets number other messages. Fix: " + _NEW_STATE
        )
