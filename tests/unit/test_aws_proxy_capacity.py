"""DynamoDB capacity as the AWS proxy meters it (benchmarks/relay.py): item sizes and
units by DynamoDB's published rules."""

from __future__ import annotations

from hatchway_local.aws_proxy import item_size, read_units, value_size, write_units


def test_item_size_counts_names_and_values() -> None:
    item = {
        "pk": {"S": "run#1"},  # 2 + 5
        "n": {"N": "12345"},  # 1 + (5 digits: 3)
        "m": {"M": {"a": {"BOOL": True}}},  # 1 + 3 + (1 + 1 + 1)
        "l": {"L": [{"S": "ab"}]},  # 1 + 3 + (1 + 2)
    }
    assert item_size(item) == 25


def test_binary_and_sets() -> None:
    assert value_size({"B": "AAEC"}) == 3  # base64 of 3 bytes
    assert value_size({"SS": ["a", "bc"]}) == 3
    assert value_size({"NULL": True}) == 1


def test_write_units_round_up_per_kilobyte_and_double_in_a_transaction() -> None:
    assert write_units(1) == 1
    assert write_units(1024) == 1
    assert write_units(1025) == 2
    assert write_units(1025, transactional=True) == 4


def test_read_units_per_four_kilobytes() -> None:
    assert read_units(0, consistent=False) == 0.5
    assert read_units(4096, consistent=True) == 1.0
    assert read_units(4097, consistent=True) == 2.0
    assert read_units(100, consistent=True, transactional=True) == 2.0
