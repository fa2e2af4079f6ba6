"""Signal handling shared by kn's long commands (`kn run`, `kn book`, `kn data import`).

`signals_handled(handler)`: inside the block `handler(signum, frame)` answers SIGTERM and SIGINT
(those not ignored), and the previous handlers come back afterwards. Handlers can be set only in
the main thread; elsewhere the block runs with none.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def signals_handled(handler):
    """Yields {signal: previous handler} of the signals `handler` answers inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield {}
        return
    old = {s: h for s in SIGNALS if (h := signal.getsignal(s)) not in (signal.SIG_IGN, None)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield old
    finally:
        for s, h in old.items():
            signal.signal(s, h)
