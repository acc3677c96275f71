"""Ctrl-C in every command: one line, exit status 130, within a second or two."""

from __future__ import annotations

import gc
import os
import signal
import threading


class CtrlC:
    """Ctrl-C in every command: one line, exit status 130, within a second or two.

    The first Ctrl-C raises KeyboardInterrupt in the main thread as usual, which _run turns into
    one line. But Python runs that only between bytecodes, and a long jitted call (an IWAE bound
    with a large K) does not return to Python for minutes. So the signal also wakes a watcher
    thread (signal.set_wakeup_fd writes to a pipe from C, whatever the main thread is doing); if the
    main thread has not handled it within GRACE_S, the watcher prints the line and ends the process.
    Outputs are written to a temporary name and renamed, so nothing is left half-written.

    A KeyboardInterrupt raised inside a gc callback (JAX registers one) or a __del__ is printed by
    Python as "Exception ignored in ..." with a traceback, and dropped. So when the signal lands
    there, the handler raises nothing and sends the signal again RETRY_S later, from another thread.
    """

    GRACE_S = 1.5
    RETRY_S = 0.02

    def __init__(self, force: bool = True):
        self.force = force and threading.current_thread() is threading.main_thread()
        self.handled = threading.Event()

    def __enter__(self) -> CtrlC:
        if self.force:
            self._read, write = os.pipe()
            os.set_blocking(write, False)
            self._write = write
            self._old_handler = signal.signal(signal.SIGINT, self._on_sigint)
            self._old_fd = signal.set_wakeup_fd(write)
            threading.Thread(target=self._watch, daemon=True, name="jaxvae-ctrl-c").start()
        return self

    def _on_sigint(self, signum, frame) -> None:
        if _in_dropped_context(frame):
            main = threading.main_thread().ident
            threading.Timer(self.RETRY_S, signal.pthread_kill, (main, signal.SIGINT)).start()
            return
        raise KeyboardInterrupt

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            if signal.SIGINT in data and not self.handled.wait(self.GRACE_S):
                os.write(2, b"jaxvae: interrupted\n")
                os._exit(130)
        os.close(self._read)

    def __exit__(self, *exc) -> None:
        if self.force:
            signal.set_wakeup_fd(self._old_fd)
            signal.signal(signal.SIGINT, self._old_handler)
            os.close(self._write)  # the watcher reads b"" and ends


def _in_dropped_context(frame) -> bool:
    """Is `frame` (or a caller) a gc callback or a __del__, where Python prints and drops exceptions?"""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False
