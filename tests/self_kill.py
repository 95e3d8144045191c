"""A trainer command that SIGKILLs its own process at a chosen step (for the resume tests).

Killing from the test by polling ``metrics.jsonl`` races a fast tiny step: the run may end
before the signal lands. This wrapper runs ``python -m mars_jax.train`` in-process and kills
it from inside the checkpoint call of step ``kill_step`` (the metrics line of that step is
already written), so the kill lands at a known step every time.
"""

from __future__ import annotations

import sys

_SCRIPT = """
import os, signal
from absl import app
from mars_jax import train
from mars_jax.train_lib import checkpoint as ckpt_lib

save = ckpt_lib.save

def save_then_die(manager, step, *args, **kwargs):
    saved = save(manager, step, *args, **kwargs)
    if step == {kill_step}:
        if {settle}:
            manager.wait_until_finished()  # the latest checkpoint is committed
        os.kill(os.getpid(), signal.SIGKILL)  # otherwise its save may still be in flight
    return saved

ckpt_lib.save = save_then_die
app.run(train.main)
"""


def self_killing_train_cmd(train_args: list[str], kill_step: int, settle: bool) -> list[str]:
    """``python -m mars_jax.train *train_args`` that dies by SIGKILL after step ``kill_step``.

    ``settle=False`` kills right after the step's save is issued (an async save may be cut
    off); ``settle=True`` first waits for in-flight saves to commit.
    """
    script = _SCRIPT.format(kill_step=int(kill_step), settle=bool(settle))
    return [sys.executable, "-c", script, *train_args]
