"""When the garbage collector runs in the `runner` command: rarely while it starts, as usual
while requests are in flight, not at all at its exit.

Start-up creates ~70,000 objects that all live on (modules, classes, schemas), and CPython 3.11
walks all of them in each full collection while they are made, and again at exit: about a third
of a 1-request run (issue 11). So the command (`cli.entry`) collects the young generation every
100,000 allocations instead of 700 while it starts; the engine freezes what set-up made just
before the first request and gives the run the collector's usual settings back (a young
collection of 100,000 objects stalls the event loop for ~70 ms, which would show in the
latencies measured); and everything is frozen once the command is done, so the exit walks
nothing (every file is closed by then; garbage still in a cycle then is never finalized, which
the command's own files, closed explicitly, do not need). Code that calls `runner.run()` or
`main()` itself keeps its own settings: only the freeze before the pool applies to it.
"""

from __future__ import annotations

import gc

START_UP_THRESHOLD = 100_000

_usual: tuple[int, int, int] | None = None   # the settings `start_up` replaced


def start_up() -> None:
    global _usual
    if _usual is None:  # (a second command in one process: the first one's usual settings)
        _usual = gc.get_threshold()
    gc.set_threshold(START_UP_THRESHOLD, *_usual[1:])


def before_run() -> None:
    """Set-up's objects live all run: keep them out of every later collection (no collection
    first: it would walk all of them, ~50 ms before the first request, to free the little
    garbage set-up leaves), then collect as usual while requests are timed (or a simulator
    serves)."""
    gc.freeze()
    _restore()


def at_exit() -> None:
    """The command is done: its objects are frozen (the exit walks none of them) and a caller
    that goes on has the usual settings back."""
    gc.freeze()
    _restore()


def _restore() -> None:
    global _usual
    if _usual is not None:
        gc.set_threshold(*_usual)
        _usual = None
