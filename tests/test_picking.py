"""Which track starts next (dlqd.picking): pure decisions over a replayed queue state."""

from __future__ import annotations

from dlqd.model import JobStatus
from dlqd.picking import is_finished, moved_ranks, next_pass_due, next_track
from dlqd.state import QueueState, apply
from tests.test_state import AT, done, replay, resolve, submit


def deferred(job_id: str, track_id: int, due_at: float) -> dict[str, object]:
    return {
        "e": "track_deferred",
        "id": job_id,
        "track_id": track_id,
        "error": {"code": "UPSTREAM_UNAVAILABLE", "message": "server error (503)"},
        "attempts": 4,
        "passes": 1,
        "due_at": due_at,
    }


def pick(
    state: QueueState,
    running: frozenset[tuple[str, int]] | set[tuple[str, int]] = frozenset(),
    now: float = AT,
) -> tuple[str, int] | None:
    """The (job id, track id) that starts next, every job counting as resolved."""
    jobs = state.active_jobs()
    choice = next_track(jobs, resolved=state.jobs, resolving=(), running=running, now=now)
    return None if choice is None else (choice[0].id, choice[1].track_id)


def test_jobs_start_high_then_normal_then_low_and_oldest_first() -> None:
    state = replay(
        submit("1", "track", 1, priority="low"),
        submit("2", "track", 2, priority="normal"),
        submit("3", "track", 3, priority="high"),
        submit("4", "track", 4, priority="normal"),
        submit("5", "track", 5, priority="high"),
    )
    order = []
    while (choice := pick(state)) is not None:
        order.append(choice[0])
        apply(state, {"e": "cancel", "id": choice[0], "at": AT})  # out of the way
    assert order == ["3", "5", "2", "4", "1"]


def test_a_jobs_tracks_go_in_order_skipping_running_and_finished_ones() -> None:
    state = replay(submit("1"), resolve("1", [11, 12, 13]), done("1", 11))
    assert pick(state) == ("1", 12)
    assert pick(state, running={("1", 12)}) == ("1", 13)
    assert pick(state, running={("1", 12), ("1", 13)}) is None


def test_a_high_priority_job_submitted_during_a_long_album_gets_the_next_slot() -> None:
    state = replay(submit("1"), resolve("1", list(range(100, 220))))
    running = {("1", 100), ("1", 101)}
    assert pick(state, running) == ("1", 102)
    apply(state, submit("2", "track", 7, priority="high"))
    assert pick(state, running) == ("2", 7)  # not the album's 103rd track


def test_unresolved_paused_and_finished_jobs_give_nothing() -> None:
    state = replay(submit("1"), submit("2", "track", 5), resolve("1", [11]))
    apply(state, {"e": "pause", "id": "1"})
    assert (
        next_track(state.active_jobs(), resolved={"1"}, resolving={"2"}, running=set(), now=AT)
        is None
    )  # job 2 is not resolved, job 1 is paused
    apply(state, {"e": "resume", "id": "1"})
    assert pick(state) == ("1", 11)


def test_a_deferred_track_waits_for_its_pass_while_the_next_ones_run() -> None:
    state = replay(submit("1"), resolve("1", [11, 12]), deferred("1", 11, due_at=AT + 900))
    assert pick(state, now=AT) == ("1", 12)
    assert next_pass_due(state.active_jobs()) == AT + 900
    assert pick(state, running={("1", 12)}, now=AT + 899) is None
    assert pick(state, running={("1", 12)}, now=AT + 900) == ("1", 11)


def test_a_job_is_finished_only_when_no_track_is_pending_or_deferred() -> None:
    state = replay(submit("1"), resolve("1", [11, 12]), done("1", 11))
    job = state.jobs["1"]
    assert not is_finished(job)
    apply(state, deferred("1", 12, due_at=AT + 900))
    assert not is_finished(job) and job.status == JobStatus.QUEUED
    apply(state, done("1", 12))
    assert is_finished(job) and job.tracks[1].next_pass_at is None


def test_a_job_being_resolved_holds_back_lower_priorities_only() -> None:
    state = replay(
        submit("1", "track", 1, priority="low"),
        submit("2", "track", 2),
        submit("3", "track", 3, priority="high"),
    )

    def chosen(resolved: set[str], running: set[tuple[str, int]]) -> str | None:
        """The job whose track starts, every unresolved job resolving now."""
        jobs = list(state.active_jobs())
        resolving = {job.id for job in jobs} - resolved
        choice = next_track(jobs, resolved=resolved, resolving=resolving, running=running, now=AT)
        return None if choice is None else choice[0].id

    assert chosen({"1", "2"}, set()) is None  # 3 resolves
    assert chosen({"1", "3"}, set()) == "3"  # 2 resolving holds back only "low"
    assert chosen({"1", "2", "3"}, {("3", 3)}) == "2"
    apply(state, submit("4", "track", 4))  # same priority as 2, still resolving
    assert chosen({"1", "2", "3"}, {("3", 3)}) == "2"


def test_a_job_whose_resolve_waits_for_a_later_pass_holds_back_nothing() -> None:
    state = replay(submit("1", "track", 1), submit("2", "track", 2, priority="high"))

    def chosen(resolving: set[str]) -> str | None:
        jobs = state.active_jobs()
        choice = next_track(jobs, resolved={"1"}, resolving=resolving, running=set(), now=AT)
        return None if choice is None else choice[0].id

    assert chosen(resolving={"2"}) is None  # the high job resolves: "normal" waits
    assert chosen(resolving=set()) == "1"  # its resolve was deferred: "normal" goes on


def move(state: QueueState, job_id: str, to: str) -> dict[str, int]:
    """Decide a move like the `move` command, and apply its records."""
    ranks = moved_ranks(
        state.run_order(),
        state.jobs[job_id],
        to,
        rank_low=state.rank_low,
        rank_high=state.rank_high,
    )
    for moved_id, rank in ranks.items():
        apply(state, {"e": "move", "id": moved_id, "rank": rank})
    return ranks


def order(state: QueueState) -> list[str]:
    return [job.id for job in state.run_order()]


def test_moves_go_top_bottom_up_and_down_among_jobs_of_the_same_priority() -> None:
    state = replay(*(submit(str(n), "track", n) for n in range(1, 5)))
    assert order(state) == ["1", "2", "3", "4"]
    move(state, "3", "top")
    assert order(state) == ["3", "1", "2", "4"]
    move(state, "3", "bottom")
    assert order(state) == ["1", "2", "4", "3"]
    assert move(state, "4", "up") == {"4": 2, "2": 4}  # the two swap ranks
    assert order(state) == ["1", "4", "2", "3"]
    move(state, "1", "down")
    assert order(state) == ["4", "1", "2", "3"]


def test_a_move_to_where_the_job_already_is_changes_nothing() -> None:
    state = replay(submit("1", "track", 1), submit("2", "track", 2))
    assert move(state, "1", "top") == {}
    assert move(state, "1", "up") == {}
    assert move(state, "2", "bottom") == {}
    assert move(state, "2", "down") == {}


def test_moves_stay_within_a_priority_and_pass_over_finished_jobs() -> None:
    state = replay(
        submit("1", "track", 1, priority="high"),
        submit("2", "track", 2),
        submit("3", "track", 3),
        submit("4", "track", 4),
    )
    apply(state, {"e": "cancel", "id": "3", "at": AT})
    move(state, "2", "top")  # first among the normal jobs, still after the high one
    assert order(state) == ["1", "2", "4"]
    move(state, "4", "up")  # past the cancelled job 3, which has no place any more
    assert order(state) == ["1", "4", "2"]


def test_the_next_track_follows_the_run_order_after_a_move() -> None:
    state = replay(submit("1", "track", 1), submit("2", "track", 2), submit("3", "track", 3))
    assert pick(state) == ("1", 1)
    move(state, "3", "top")
    assert pick(state) == ("3", 3)
    apply(state, {"e": "priority", "id": "2", "priority": "high"})
    assert pick(state) == ("2", 2)
