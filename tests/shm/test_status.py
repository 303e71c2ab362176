"""Status rows: a beat can never leave its row odd (regression: a server timestamp far in the future
overflowed ``lag_ns`` inside the seqlock section, so reads failed for good), and a row left odd by a
killed process is repaired by its next owner."""
from procs.runtime.roster import STATUS_ROWS
from shm.status import State, StatusRow, StatusTable


def test_values_out_of_range_are_clamped_outside_the_section(instance):
    row = StatusRow(StatusTable.writer(instance, STATUS_ROWS), "ingest")
    reader = StatusTable.open(instance, STATUS_ROWS)
    row.lag_ns = -(10**30)             # receive time minus a timestamp from the far future
    row.msgs_in = 10**30
    row.dropped = -5
    for _ in range(3):
        row.beat(State.RUNNING)        # used to raise OverflowError with the row left odd
    r = reader.read("ingest", max_spins=10)
    assert int(r["seq"]) % 2 == 0
    assert int(r["lag_ns"]) == -(2**63) and int(r["msgs_in"]) == 2**64 - 1 and int(r["dropped"]) == 0
    assert State(int(r["state"])) is State.RUNNING


def test_a_row_left_odd_is_repaired_by_its_next_owner(instance):
    table = StatusTable.writer(instance, STATUS_ROWS)
    StatusRow(table, "indicator")
    table.lock.words[table.row_index("indicator")] += 1   # killed inside a beat
    reader = StatusTable.open(instance, STATUS_ROWS)
    StatusRow(StatusTable.writer(instance, STATUS_ROWS), "indicator")   # the restarted process
    assert int(reader.read("indicator", max_spins=10)["seq"]) % 2 == 0


def test_a_beat_leaves_seq_and_parked_alone(instance):
    table = StatusTable.writer(instance, STATUS_ROWS)
    row = StatusRow(table, "indicator")
    row.set_parked(True)
    row.detail = "x" * 200
    row.beat()
    r = StatusTable.open(instance, STATUS_ROWS).read("indicator")
    assert int(r["parked"]) == 1 and int(r["seq"]) % 2 == 0 and bytes(r["detail"]) == b"x" * 88
