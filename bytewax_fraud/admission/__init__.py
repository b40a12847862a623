"""What a valid event must also satisfy to be scored: the right partition, a believable time.

`misrouting.py` dead-letters events whose user belongs to another partition;
`event_time.py` keeps each partition's event-time clock and decides too far
ahead / too late; `rejects.py` builds their dead letters. See docs/event-time.md.
"""
