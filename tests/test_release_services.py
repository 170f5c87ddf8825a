"""The release services' explicit rollback (`auditflow.audits.release.Rollback`): undo records
run in reverse order when the block raises, never when it does not, and one failing undo does
not stop the others. (The registry side is covered end to end in tests/test_release.py.)"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from auditflow.audits.release import Rollback


@dataclass(frozen=True)
class Step:
    name: str
    done: list[str]
    fails: bool = False

    def undo(self) -> None:
        self.done.append(self.name)
        if self.fails:
            raise OSError(f"cannot undo {self.name}")


def test_undoes_in_reverse_order_and_the_error_goes_on() -> None:
    done: list[str] = []
    with pytest.raises(RuntimeError, match="after promotion"), Rollback() as rollback:
        rollback.add(Step("register", done))
        rollback.add(Step("promote", done))
        raise RuntimeError("after promotion")
    assert done == ["promote", "register"]


def test_nothing_is_undone_when_the_block_succeeds() -> None:
    done: list[str] = []
    with Rollback() as rollback:
        rollback.add(Step("register", done))
    assert done == []


def test_a_failing_undo_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt), Rollback() as rollback:
        rollback.add(Step("register", done))
        rollback.add(Step("promote", done, fails=True))
        raise KeyboardInterrupt
    assert done == ["promote", "register"]
    assert "could not undo" in caplog.text
