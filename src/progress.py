"""One-line progress for long steps (dataset writing, evaluation, conversion).

It redraws a single stderr line and only when stderr is a terminal, so logs, pipes and CI output
get nothing from it.
"""
import sys
import time


class Progress:
    """progress = Progress('eval', 'batches'); progress.update(i, total); progress.close()"""

    def __init__(self, label, unit='', stream=None, min_interval=0.25):
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.enabled = hasattr(self.stream, 'isatty') and self.stream.isatty()
        self.min_interval = min_interval
        self.start = time.time()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, done, total=None, note=''):
        if not self.enabled:
            return
        now = time.time()
        finished = total is not None and done >= total
        if not finished and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        elapsed = now - self.start
        text = f'{self.label} {done}' + (f'/{total}' if total else '') + (f' {self.unit}' if self.unit else '')
        text += f' {elapsed:.0f}s'
        if total and 0 < done < total and elapsed >= 1:
            text += f' ETA {elapsed * (total - done) / done:.0f}s'
        if note:
            text += f' {note}'
        self.stream.write('\r' + text + '\033[K')
        self.stream.flush()
        self._drawn = True

    def close(self):
        if self._drawn:
            self.stream.write('\n')
            self.stream.flush()
            self._drawn = False
