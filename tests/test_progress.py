"""Work after the last batch says what it is doing once it takes a while, and quick work says nothing."""

import logging
import time
from types import SimpleNamespace

from runtime.progress import reported

RANK_ZERO = SimpleNamespace(is_global_zero=True)


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("lightning")]


def test_slow_work_is_announced_followed_and_closed(caplog):
    caplog.set_level(logging.INFO)
    with reported(RANK_ZERO, "decoding 16 images", after_s=0.05, every_s=0.1):
        time.sleep(0.5)
    lines = messages(caplog)
    assert lines[0] == "decoding 16 images ..." and lines[-1].startswith("decoding 16 images: done in ")
    assert any(line.endswith(" s so far") for line in lines[1:-1])  # a sign of life while it runs


def test_quick_work_and_other_processes_print_nothing(caplog):
    caplog.set_level(logging.INFO)
    with reported(RANK_ZERO, "decoding", after_s=5.0):
        pass
    with reported(SimpleNamespace(is_global_zero=False), "decoding", after_s=0.0, every_s=0.01):
        time.sleep(0.05)
    assert messages(caplog) == []
