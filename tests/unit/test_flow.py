"""The flow-control decision (listener.runtime.flow.choose): which pending gated runs may start, pure."""

from __future__ import annotations

from typing import Any

from listener.rules.config import WorkflowLimit
from listener.runtime.flow import choose, ordered_keys


def run(
    id: str, workflow: str = "m:w", key: str | None = None, *, seq: int = 0, key_limit: int | None = None,
    ordered: bool = False,
) -> dict[str, Any]:  # fmt: skip
    return {
        "id": id,
        "workflow": workflow,
        "key": key,
        "key_limit": key_limit,
        "ordered": ordered,
        "seq": seq,
    }


def decide(
    candidates: list[dict[str, Any]],
    *,
    running: list[tuple[str, str | None]] | None = None,
    heads: dict[str, int] | None = None,
    rate_left: dict[str, int] | None = None,
    limits: tuple[WorkflowLimit, ...] = (),
    free: int = 100,
) -> tuple[list[str], bool]:
    return choose(
        candidates,
        running=running or [],
        heads=heads or {},
        rate_left=rate_left or {},
        limits={limit.workflow: limit for limit in limits},
        free=free,
    )


def test_without_limits_every_candidate_starts_in_order_up_to_free() -> None:
    assert decide([run("a"), run("b"), run("c")]) == (["a", "b", "c"], False)
    assert decide([run("a"), run("b"), run("c")], free=2) == (["a", "b"], False)


def test_workflow_concurrency_counts_running_and_chosen_runs() -> None:
    limit = WorkflowLimit(workflow="m:w", concurrency=2)
    other = run("x", workflow="m:other")
    assert decide([run("a"), run("b"), run("c"), other], limits=(limit,)) == (["a", "b", "x"], True)
    assert decide([run("a"), run("b")], running=[("m:w", None)], limits=(limit,)) == (["a"], True)
    assert decide([run("a")], running=[("m:w", None)] * 2, limits=(limit,)) == ([], True)


def test_rate_left_is_spent_by_each_start() -> None:
    assert decide([run("a"), run("b"), run("c")], rate_left={"m:w": 2}) == (["a", "b"], True)
    assert decide([run("a")], rate_left={"m:w": 0}) == ([], True)
    assert decide([run("a", workflow="m:free")], rate_left={"m:w": 0}) == (["a"], False)


def test_key_limit_counts_runs_of_the_same_key_only() -> None:
    runs = [run("a", key="k", key_limit=1), run("b", key="k", key_limit=1), run("c", key="j", key_limit=1)]
    assert decide(runs) == (["a", "c"], True)
    assert decide(runs, running=[("m:w", "j")]) == (["a"], True)
    assert decide([run("a", key=None, key_limit=1), run("b", key=None, key_limit=1)]) == (["a", "b"], False)


def test_an_ordered_key_starts_only_its_head_and_only_while_none_of_it_runs() -> None:
    first, second = run("a", key="k", seq=1, ordered=True), run("b", key="k", seq=2, ordered=True)
    assert decide([first, second], heads={"k": 1}) == (["a"], True)
    # the head is older than the candidates seen (running, or beyond the scan): none starts
    assert decide([second], heads={"k": 1}) == ([], True)
    assert decide([first], heads={"k": 1}, running=[("m:w", "k")]) == ([], True)
    # another key is not held back by this one
    other = run("c", key="j", seq=3, ordered=True)
    assert decide([first, second, other], heads={"k": 1, "j": 3}) == (["a", "c"], True)


def test_a_held_run_does_not_take_a_free_slot() -> None:
    limit = WorkflowLimit(workflow="m:w", concurrency=1)
    runs = [run("a"), run("b"), run("c", workflow="m:other")]
    assert decide(runs, limits=(limit,), free=2) == (["a", "c"], True)


def test_the_inputs_are_not_changed() -> None:
    rate_left = {"m:w": 1}
    decide([run("a"), run("b")], rate_left=rate_left)
    assert rate_left == {"m:w": 1}


def test_ordered_keys_are_the_keys_of_ordered_candidates() -> None:
    runs = [run("a", key="k", ordered=True), run("b", key="j"), run("c", key="k", ordered=True), run("d")]
    assert ordered_keys(runs) == ["k"]
