"""The web process's turn (app/turns.py): handed on in order, returning threads first; a
thread that waits too long leaves the line without it; a holder that overstays loses it."""

import threading
import time
from collections.abc import Callable

import pytest

from app import turns
from app.turns import Turn

WAIT_S = 5.0  # bounds every wait here; the order is what is checked, never a duration


def line_up(
    turn: Turn, order: list[str], name: str, returning: bool = False, wait_s: float = WAIT_S
) -> threading.Thread:
    """A thread that takes the turn (waiting up to ``wait_s``), notes its name and hands the
    turn on; started once the line is one longer, so arrival order is known."""

    def run() -> None:
        assert turn.take(wait_s, returning=returning)
        order.append(name)
        turn.give_back()

    return start_in_line(turn, run)


def start_in_line(turn: Turn, target: Callable[[], None]) -> threading.Thread:
    """A thread running ``target``, which begins by taking the turn; returned once it is in
    line (the line one longer), so arrival order is known."""
    before = waiting(turn)
    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while waiting(turn) == before and time.monotonic() < deadline:
        time.sleep(0.001)
    return thread


def waiting(turn: Turn) -> int:
    return len(turn._returning) + len(turn._new)


@pytest.fixture
def patient(monkeypatch):
    """Holders here keep the turn while threads line up: no one overstays in these tests."""
    monkeypatch.setattr(turns, "HOLD_S", WAIT_S * 2)


def test_the_turn_goes_to_returning_threads_first_then_new_ones_by_arrival(patient):
    turn, order = Turn(), []
    assert turn.take(WAIT_S)
    threads = [
        line_up(turn, order, "new 1"),
        line_up(turn, order, "new 2"),
        line_up(turn, order, "back 1", returning=True),
        line_up(turn, order, "new 3"),
        line_up(turn, order, "back 2", returning=True),
    ]
    turn.give_back()
    for thread in threads:
        thread.join(WAIT_S)
    assert order == ["back 1", "back 2", "new 1", "new 2", "new 3"]
    assert turn.take(0) and turn.held()  # free again once everyone is done


def test_a_thread_that_waits_past_its_limit_leaves_the_line_without_the_turn(patient):
    turn, got = Turn(), []
    assert turn.take(WAIT_S)
    waiter = threading.Thread(target=lambda: got.append(turn.take(0.05)))
    waiter.start()
    waiter.join(WAIT_S)
    assert got == [False] and waiting(turn) == 0
    turn.give_back()
    assert not turn.held() and turn.take(0)


def test_only_the_holder_hands_the_turn_on():
    turn = Turn()
    assert turn.take(WAIT_S)
    other = threading.Thread(target=turn.give_back)  # teardown of a request without it
    other.start()
    other.join(WAIT_S)
    assert turn.held()


def test_aside_hands_the_turn_on_for_a_wait_and_takes_it_back_ahead_of_new_requests(patient):
    turn, order, held = Turn(), [], threading.Event()

    def other_request() -> None:  # takes the free turn, keeps it until this one is back
        assert turn.take(WAIT_S)
        held.set()
        deadline = time.monotonic() + WAIT_S
        while not turn._returning and time.monotonic() < deadline:
            time.sleep(0.001)
        order.append("other")
        turn.give_back()

    assert turn.take(WAIT_S)
    with turn.aside(lambda: WAIT_S):  # this request waits, say on its answers
        assert not turn.held()
        other = threading.Thread(target=other_request)
        other.start()
        assert held.wait(WAIT_S)
        newcomer = line_up(turn, order, "new")
    order.append("back")  # taken back before the newcomer, who came first
    assert turn.held()
    turn.give_back()
    for thread in (other, newcomer):
        thread.join(WAIT_S)
    assert order == ["other", "back", "new"]


def test_a_holder_that_overstays_loses_the_turn_to_the_first_in_line():
    turn, order = Turn(), []
    assert turn.take(WAIT_S)  # and keeps it, like a request reading a trickling body
    first = line_up(turn, order, "first")
    second = line_up(turn, order, "second")
    first.join(WAIT_S)
    second.join(WAIT_S)
    assert order == ["first", "second"]  # the first took over after HOLD_S, then handed on
    assert not turn.held()
    turn.give_back()  # the old holder's hand-on is no one's: the turn stays free
    assert turn.take(0) and turn.held()


def test_a_request_that_lost_the_turn_takes_it_back_after_a_wait_and_leaves_on_a_refusal():
    turn = Turn()
    assert turn.take(WAIT_S)
    taker = line_up(turn, [], "taker")  # takes over after HOLD_S: this thread overstayed
    taker.join(WAIT_S)
    assert not turn.held()
    with turn.aside(lambda: WAIT_S):
        pass
    assert turn.held()  # back in turns after its wait
    try:
        with turn.aside(lambda: WAIT_S):
            raise TimeoutError("refused while it waited")
    except TimeoutError:
        pass
    assert not turn.held()  # answered at once, without waiting for the turn again
    turn.done()
    with turn.aside(lambda: WAIT_S):  # its request is over: nothing to hand on or take
        pass
    assert not turn.held() and turn.take(0)


def test_a_holder_that_overstays_after_a_plain_hand_off_loses_the_turn_when_the_next_comes(
    monkeypatch,
):
    """After a plain hand-off the new first in line does not know it is first, and would
    look only every LOOK_S (never, here): the next thread to join the line finds the holder
    overstaying and wakes it, and it takes over."""
    monkeypatch.setattr(turns, "LOOK_S", WAIT_S * 12)
    turn, order, holding, release = Turn(), [], threading.Event(), threading.Event()

    def stalled_request() -> None:  # handed the turn, then keeps it, its body trickling in
        assert turn.take(WAIT_S)
        holding.set()
        release.wait(WAIT_S * 2)  # past the joins below
        turn.done()

    assert turn.take(WAIT_S)
    stalled = start_in_line(turn, stalled_request)
    # Behind the stalled one, so not first on joining; it would take over at its own
    # deadline, after the joins below have given up on it.
    unaware = line_up(turn, order, "unaware", wait_s=WAIT_S * 2)
    turn.give_back()  # a plain hand-off, to the stalled one
    assert holding.wait(WAIT_S)
    time.sleep(turns.HOLD_S * 2)  # it overstays
    later = line_up(turn, order, "later")
    for thread in (unaware, later):
        thread.join(WAIT_S)
    release.set()
    stalled.join(WAIT_S)
    assert order == ["unaware", "later"]  # "unaware" took over, then handed on in order
