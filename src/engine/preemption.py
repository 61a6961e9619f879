"""Stopping on request: cluster schedulers (Slurm, Kubernetes, ModelArts) end a job with SIGTERM
and a grace period before SIGKILL, and Ctrl-C sends SIGINT. Either asks the training loop to stop
after the current step and write a checkpoint of the exact position; a second signal to the same
process ends it at once.

SIGUSR1 is the launchers' way of passing a SIGTERM/SIGINT on (scripts/env.sh): it asks for the same
stop but never counts as the second signal, so a rank that a scheduler signals directly and its
launcher signals again still stops cleanly. A launcher asked twice ends its ranks at once itself."""
import os
import signal
import threading

import mindspore as ms

from .train_step import AnyRank

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_STOP = signal.SIGUSR1


class TrainingStopped(Exception):
    """Training stopped on request, with a checkpoint `--resume auto` continues from. Not an
    error: train.py reports it and exits 0."""

    def __init__(self, reason, where, checkpoint, history):
        super().__init__(f'stopped by {reason} at {where}; checkpoint {checkpoint}')
        self.reason, self.where, self.checkpoint, self.history = reason, where, checkpoint, history


class StopRequest:
    """Context manager that turns SIGTERM/SIGINT into a request the loop polls with stop_now().

    Single process: stop_now() is True after the first signal. Data parallel: ranks get the signal
    at different moments (or only some get it), and a rank that left while its peers wait in a
    gradient all-reduce would hang them; so the request is an OR over ranks, reduced only at sync
    points every rank reaches at the same step (a reduction per step would synchronise devices with
    the host at every step).

    Python runs a handler only between bytecodes: a signal that arrives while a step runs in
    MindSpore's C++ code is handled when the step returns, and two that arrive then count as one.
    """

    def __init__(self, group_size=1):
        self.reason = None  # what asked for the stop: a signal name, or another rank
        self._signals_here = 0
        self._any_rank = AnyRank() if group_size > 1 else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = {s: signal.signal(s, self._handle) for s in (*STOP_SIGNALS, FORWARDED_STOP)}
        return self

    def __exit__(self, *exc):
        # After a stop the handler stays: a rank told to stop by its peers still gets its own
        # SIGTERM from the scheduler, maybe while it returns, and that one must not kill it.
        if self.reason is None:
            for s, handler in self._previous.items():
                signal.signal(s, handler)
        self._previous = {}
        return False

    def _handle(self, signum, _frame):
        if signum == FORWARDED_STOP:
            if self.reason is None:
                self.reason = 'the launcher (SIGUSR1)'
            return
        self._signals_here += 1
        if self._signals_here > 1:  # asked twice: the default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.reason is None:
            self.reason = signal.Signals(signum).name

    def stop_now(self, sync_point=True):
        """Whether to stop here. Under data parallelism every rank must make the same calls with
        the same sync_point; only sync points reduce."""
        if self._any_rank is None:
            return self.reason is not None
        if not sync_point:
            return False
        asked = ms.Tensor(0.0 if self.reason is None else 1.0, ms.float32)
        stop = bool(self._any_rank(asked).asnumpy())
        if stop and self.reason is None:
            self.reason = 'a stop request on another rank'
        return stop
