"""The warm ClientApp executor: forked children run Flower's ClientApp main with the parent's imports."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import exit_handler
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus

from fedsynth.cli import executor as executor_module
from fedsynth.cli.executor import ForkExecutor, preload


def _spec(task_type: TaskType = TaskType.CLIENT_APP, task_id: int = 7) -> ExecutionSpec:
    return ExecutionSpec(task_type=task_type, runtime_api_address="127.0.0.1:1", token="ab" * 32, insecure=True,
                         root_certificates_path=None, runtime_dependency_install=False, parent_pid=os.getpid(),
                         suppress_output=False, task_id=task_id)


def _wait_reaped(executor: ForkExecutor, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while executor.children and time.monotonic() < deadline:
        executor.reconcile()
        time.sleep(0.05)
    assert not executor.children, "the forked child did not finish"


def test_child_runs_flower_clientapp_main_with_the_parents_imports_and_not_its_exit_handlers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: stand-in for flwr-clientapp's main that reports what the child saw, then exits like flwr_exit
    import flwr.supernode.runtime.run_clientapp as flower_main

    report = tmp_path / "child.json"
    parent_marker = tmp_path / "parent-exit-handler-ran"

    def fake_run_clientapp(**kwargs: object) -> None:
        report.write_text(json.dumps({
            "pid": os.getpid(), "ppid": os.getppid(), "kwargs": {k: str(v) for k, v in kwargs.items()},
            "torch_preloaded": "torch" in sys.modules, "exit_handlers": len(exit_handler.registered_exit_handlers),
        }))
        exit_handler.trigger_exit_handlers(run_before_force_exit=False)
        raise SystemExit(3)

    monkeypatch.setattr(flower_main, "run_clientapp", fake_run_clientapp)
    exit_handler.add_exit_handler(lambda: parent_marker.write_text("x"))
    preload(["torch"])
    executor = ForkExecutor()
    try:
        # Act
        result = executor.launch(_spec())
        _wait_reaped(executor)
    finally:
        exit_handler.registered_exit_handlers.pop()
    # Assert
    seen = json.loads(report.read_text())
    assert result.status == LaunchResultStatus.ACCEPTED
    assert seen["pid"] != os.getpid() and seen["ppid"] == os.getpid()
    assert seen["torch_preloaded"] is True
    assert seen["kwargs"]["token"] == "ab" * 32 and seen["kwargs"]["runtime_api_address"] == "127.0.0.1:1"
    assert seen["kwargs"]["parent_pid"] == str(os.getpid())
    assert seen["exit_handlers"] == 0 and not parent_marker.exists()
    assert executor.exit_codes[7] == 3


def test_a_crashing_child_never_returns_into_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supernode.runtime.run_clientapp as flower_main

    def boom(**kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(flower_main, "run_clientapp", boom)
    executor = ForkExecutor()

    executor.launch(_spec(task_id=8))
    _wait_reaped(executor)

    assert executor.exit_codes[8] == 1


def test_a_childs_warm_hints_reach_the_parent_and_polls_speed_up_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: the child "trains" a round (records a hint); the parent's warm() is replaced by a recorder
    import flwr.supernode.runtime.run_clientapp as flower_main

    from fedsynth.client import warm as warm_module

    hint = warm_module.WarmHint(data_path="/site.csv", schema={"columns": []}, rdp_terms=((0.1, 1.0),))

    def fake_run_clientapp(**kwargs: object) -> None:
        warm_module.record_hint(hint)
        raise SystemExit(0)

    warmed: list[list[warm_module.WarmHint]] = []
    monkeypatch.setattr(flower_main, "run_clientapp", fake_run_clientapp)
    monkeypatch.setattr(warm_module, "warm", lambda hints: warmed.append(list(hints)))
    executor = ForkExecutor(poll_interval=0.2)
    # Act
    executor.launch(_spec(task_id=9))
    pause_while_running = executor.pause(0.2)
    _wait_reaped(executor)
    pause_after = executor.pause(0.2)
    # Assert
    assert warmed == [[hint]] and executor.exit_codes[9] == 0
    assert not executor.hint_pipes
    assert pause_while_running == 0.2
    assert pause_after == pytest.approx(executor_module.MIN_POLL_INTERVAL, abs=0.01)


def test_a_cut_hint_line_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedsynth.client import warm as warm_module

    warmed: list[list[warm_module.WarmHint]] = []
    monkeypatch.setattr(warm_module, "warm", lambda hints: warmed.append(list(hints)))
    hint = warm_module.WarmHint(data_path="/site.csv", schema={"columns": []})
    read_end, write_end = os.pipe()
    os.write(write_end, (hint.to_json() + "\n" + hint.to_json()[:20]).encode())
    os.close(write_end)

    ForkExecutor._warm_from(read_end)

    assert warmed == [[hint]]


def test_only_clientapp_tasks_are_launched() -> None:
    result = ForkExecutor().launch(_spec(TaskType.SERVER_APP))

    assert result.status == LaunchResultStatus.FAILED


def test_preload_imports_modules_and_drops_root_log_handlers_they_add(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: a module that, like Opacus, calls logging.basicConfig at import
    import logging

    (tmp_path / "adds_root_handler.py").write_text("import logging\nlogging.basicConfig()\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    # Act
    took = preload(["adds_root_handler"])
    # Assert
    assert "adds_root_handler" in sys.modules and set(took) == {"adds_root_handler"}
    assert logging.getLogger().handlers == []


def test_the_executor_refuses_ambiguous_runtime_tls() -> None:
    with pytest.raises(SystemExit, match="exactly one"):
        executor_module.main(["--runtime-api-address", "127.0.0.1:1"])


def test_preload_starts_no_python_thread_so_forking_stays_safe() -> None:
    import threading

    preload()

    assert threading.active_count() == 1


def test_forked_clientapps_retry_their_message_pull_sooner(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange
    import functools

    import flwr.supernode.runtime.run_clientapp as flower_main
    from flwr.supercore.inflatable import inflatable_utils

    original = inflatable_utils.pull_and_inflate_object_from_tree
    monkeypatch.setattr(flower_main, "pull_and_inflate_object_from_tree", original)
    # Act
    executor_module._shorten_message_pull_backoff(0.05)
    executor_module._shorten_message_pull_backoff(0.02)  # idempotent: the last pause wins
    # Assert
    patched = flower_main.pull_and_inflate_object_from_tree
    assert isinstance(patched, functools.partial) and patched.func is original
    assert patched.keywords == {"initial_backoff": 0.02, "backoff_cap": executor_module.PULL_BACKOFF_CAP,
                                "max_tries_per_object": None}


def _sleeping_child_executor(monkeypatch: pytest.MonkeyPatch, *, trains: float, cap: float) -> ForkExecutor:
    """An executor whose children "train" for ``trains`` s; its longest wait while one runs is ``cap`` s."""
    import flwr.supernode.runtime.run_clientapp as flower_main

    def fake_run_clientapp(**kwargs: object) -> None:
        time.sleep(trains)
        raise SystemExit(0)

    monkeypatch.setattr(flower_main, "run_clientapp", fake_run_clientapp)
    monkeypatch.setattr(executor_module, "RUNNING_POLL_INTERVAL", cap)
    return ForkExecutor(poll_interval=0.2)


def test_while_a_child_runs_the_parent_waits_for_it_instead_of_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arrange: a child that trains for 1.0 s; the parent's longest wait while it runs is 10 s
    executor = _sleeping_child_executor(monkeypatch, trains=1.0, cap=10.0)
    t0 = time.monotonic()
    executor.wait(0.05)  # no child: the pause asked for
    no_child = time.monotonic() - t0
    executor.launch(_spec(task_id=11))
    # Act: one pause of Flower's loop while the child runs
    t0 = time.monotonic()
    executor.wait(executor.pause(0.2))
    waited = time.monotonic() - t0
    executor.reconcile()
    # Assert: woken by the child finishing (not after 0.2 s, not after 10 s), then reaped with its exit code
    assert 0.04 <= no_child < 0.5
    assert 0.8 < waited < 8.0
    _wait_reaped(executor, timeout=5.0)
    assert executor.exit_codes[11] == 0 and not executor.finishing
    assert executor.pause(0.2) == pytest.approx(executor_module.MIN_POLL_INTERVAL, abs=0.01)


def test_a_long_child_is_still_polled_every_running_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    executor = _sleeping_child_executor(monkeypatch, trains=60.0, cap=0.3)
    executor.launch(_spec(task_id=12))
    t0 = time.monotonic()
    executor.wait(executor.pause(0.2))
    waited = time.monotonic() - t0
    assert 0.25 < waited < 30.0 and executor.children and not executor.finishing
    executor.close()  # SIGTERM to the child, reaped
    assert not executor.children and executor.exit_codes[12] != 0
