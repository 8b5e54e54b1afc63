"""examples/parallel_backups.py: conflicting commands never overlap and the
parallel result equals the one-at-a-time run's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "parallel_backups.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("parallel_backups_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("vms", "commands", "workers", "seed"),
    [(40, 200, 8, 1), (40, 200, 16, 2), (6, 80, 3, 3), (3, 60, 4, 4), (10, 50, 1, 5)],
)
def test_parallel_run_never_overlaps_conflicts_and_equals_the_sequential_run(
    example: ModuleType, vms: int, commands: int, workers: int, seed: int
) -> None:
    ops = example.make_workload(vms=vms, commands=commands, seed=seed)
    parallel = example.run_virtual(
        lambda: example.run_parallel(ops, vms=vms, workers=workers, backup_cap=max(1, workers - 2))
    )
    sequential = example.run_virtual(lambda: example.run_sequential(ops, vms=vms))
    assert parallel.violations == ()
    assert parallel.state == sequential.state
    assert parallel.outcomes == sequential.outcomes
    # The run did real work in parallel, and failures stayed their own.
    assert parallel.peak == min(workers, parallel.peak) and (workers == 1 or parallel.peak > 1)
    assert parallel.summary.failed == sum(o[0] != "ok" for o in sequential.outcomes) >= 1
    assert parallel.summary.succeeded + parallel.summary.failed == commands
    if workers > 1:
        assert parallel.makespan < sequential.makespan
    else:
        assert parallel.makespan == pytest.approx(sequential.makespan)


@pytest.mark.parametrize("workers", [4, 16])
def test_critical_path_priorities_keep_the_sequential_result(
    example: ModuleType, workers: int
) -> None:
    ops = example.make_workload(vms=40, commands=200, seed=1)
    priorities = example.critical_first(ops)
    assert len(set(priorities)) > 10  # they do reorder the queue
    plain = example.run_virtual(lambda: example.run_parallel(ops, vms=40, workers=workers))
    ranked = example.run_virtual(
        lambda: example.run_parallel(ops, vms=40, workers=workers, priorities=priorities)
    )
    sequential = example.run_virtual(lambda: example.run_sequential(ops, vms=40))
    assert ranked.violations == ()
    assert (ranked.state, ranked.outcomes) == (sequential.state, sequential.outcomes)
    assert ranked.makespan <= plain.makespan


def test_the_example_checks_itself_and_prints_a_report(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert example.main(["--vms", "12", "--commands", "60", "--workers", "4"]) == 0
    out = capsys.readouterr().out
    assert "conflicting commands that overlapped: 0" in out
    assert "result equals the sequential run's (state and every command's outcome): True" in out
    assert "NoBackupError: vm-11: no backup to restore from" in out


def test_the_sequential_reference_sees_the_order_it_runs_in(example: ModuleType) -> None:
    # The reference is sensitive to order: swapping a restore and the backup
    # before it changes the outcome, so equality above is not vacuous.
    ops = example.make_workload(vms=4, commands=40, seed=7)
    first_restore = next(
        n for n, op in enumerate(ops) if op.action == "restore" and n > 0 and ops[n - 1].vm == op.vm
    )
    swapped = list(ops)
    swapped[first_restore - 1], swapped[first_restore] = ops[first_restore], ops[first_restore - 1]
    one = example.run_virtual(lambda: example.run_sequential(ops, vms=4))
    two = example.run_virtual(lambda: example.run_sequential(swapped, vms=4))
    assert (one.state, one.outcomes) != (two.state, two.outcomes)
