"""The local Apache Kafka's helpers that need no broker."""

from bytewax_fraud.tools import local_broker


def test_a_cluster_id_starting_with_a_dash_is_drawn_again(monkeypatch):
    # The storage tool reads an id that starts with "-" as an option and refuses to
    # format: one random id in 64 did, and the test broker failed to start.
    draws = iter([b"\xf8" + bytes(15)] * 3 + [bytes(16)])  # "-AAA…" three times, then "AAA…"
    monkeypatch.setattr(local_broker.os, "urandom", lambda n: next(draws))
    assert local_broker._cluster_id() == "A" * 22


def test_cluster_ids_are_random_and_well_formed():
    ids = {local_broker._cluster_id() for _ in range(2_000)}
    assert len(ids) == 2_000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
