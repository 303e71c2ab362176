"""The order state machine: every legal transition is taken, every illegal one refused, a closed
order never changes (property-based)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from procs.trading.orders import CLOSED, TRANSITIONS, IllegalTransition, Order, OrderState, new_run_id


def _order() -> Order:
    return Order("smtm-test-1", "KRW-BTC", "bid", "limit", 100.0, 1.0, "entry", "macd_cross", 1, 0)


def _at(state: OrderState) -> Order:
    o = _order()
    o.state = state
    return o


@pytest.mark.parametrize("src,dst", [(s, d) for s in OrderState for d in OrderState])
def test_every_pair(src, dst):
    o = _at(src)
    if dst in TRANSITIONS[src]:
        o.move(dst, 5)
        assert o.state is dst and o.history == [(src.value, dst.value)]
    else:
        with pytest.raises(IllegalTransition):
            o.move(dst, 5)
        assert o.state is src and o.history == []


def test_closed_states_are_terminal_and_reachable():
    assert {OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED, OrderState.EXPIRED} == CLOSED
    reach, frontier = {OrderState.NEW}, [OrderState.NEW]
    while frontier:
        for n in TRANSITIONS[frontier.pop()]:
            if n not in reach:
                reach.add(n)
                frontier.append(n)
    assert reach == set(OrderState)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list(OrderState)), max_size=12))
def test_random_walks(targets):
    o = _order()
    for t in targets:
        before = o.state
        if t in TRANSITIONS[before]:
            o.move(t, 1)
            assert o.state is t
        else:
            with pytest.raises(IllegalTransition):
                o.move(t, 1)
            assert o.state is before
        if before in CLOSED:
            assert o.state is before   # a closed order never changes


def test_fills_move_to_partial_then_filled():
    o = _at(OrderState.ACCEPTED)
    o.add_fill(99.0, 0.4, 0.02, 10)
    assert o.state is OrderState.PARTIALLY_FILLED and o.remaining == pytest.approx(0.6)
    o.add_fill(98.0, 0.6, 0.03, 11)
    assert o.state is OrderState.FILLED and o.avg_fill == pytest.approx(99 * 0.4 + 98 * 0.6)
    with pytest.raises(IllegalTransition):
        o.add_fill(98.0, 0.1, 0.0, 12)
    assert o.filled == pytest.approx(1.0)


def test_run_ids_do_not_repeat():
    ids = {new_run_id() for _ in range(2000)}
    assert len(ids) == 2000 and all(len(i) <= 18 for i in ids)


def test_the_shared_open_states_are_the_state_machines():
    from procs.trading.orders import OPEN
    from shm.trading import OPEN_STATES
    assert {s.value for s in OPEN} == OPEN_STATES
