"""A state directory remembers the kind of input it was built from and refuses another."""

from __future__ import annotations

from pathlib import Path

import pytest

from bytewax_fraud.connectors.input_kind import NAME, check_input_kind
from bytewax_fraud.errors import StateError


def test_the_first_kind_is_recorded_and_the_same_kind_accepted(tmp_path: Path) -> None:
    check_input_kind(tmp_path, "files")
    assert (tmp_path / NAME).exists()
    check_input_kind(tmp_path, "files")


@pytest.mark.parametrize("then", ["kafka", "generator"])
def test_another_kind_is_refused_naming_both(tmp_path: Path, then: str) -> None:
    check_input_kind(tmp_path, "files")
    with pytest.raises(StateError, match=f"built from the files input and this run reads {then}"):
        check_input_kind(tmp_path, then)


def test_no_state_directory_records_nothing(tmp_path: Path) -> None:
    check_input_kind(tmp_path / "absent", "kafka")
    assert not (tmp_path / "absent").exists()
