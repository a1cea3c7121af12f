"""The upload deadline's watcher: one thread for every upload, each cut at its own time."""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace

import pytest

from bridge.delivery.deadline import Deadline, Watcher


class TestWatcher:
    def test_a_short_deadline_behind_a_long_one_is_cut_on_time(self) -> None:
        """The watcher waits for the earliest running deadline, whatever came first."""
        ours, theirs = socket.socketpair()
        try:
            long = Deadline(60.0)
            long.__enter__()
            try:
                started = time.monotonic()
                with Deadline(0.2) as short:
                    short.attach(SimpleNamespace(sock=ours))  # a connection: its socket
                    assert ours.recv(1) == b""  # blocks until the watcher shuts it down
                assert short.expired
                assert 0.2 <= time.monotonic() - started < 5.0
                assert not long.expired
            finally:
                long.__exit__(None, None, None)
        finally:
            ours.close()
            theirs.close()

    def test_a_finished_upload_is_left_alone(self) -> None:
        """Its time passes (a later deadline is cut after it), its socket stays open."""
        ours, theirs = socket.socketpair()
        probe, peer = socket.socketpair()
        try:
            with Deadline(0.05) as finished:
                finished.attach(SimpleNamespace(sock=ours))
            with Deadline(0.2) as later:
                later.attach(SimpleNamespace(sock=probe))
                assert probe.recv(1) == b""  # cut: the watcher went past the first one's time
            theirs.sendall(b"x")
            assert ours.recv(1) == b"x"  # never shut down
            assert not finished.expired
        finally:
            for sock in (ours, theirs, probe, peer):
                sock.close()

    def test_a_watcher_thread_that_could_not_start_is_started_by_the_next_upload(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Out of threads for the first upload: the next one's deadline is still enforced."""
        watcher = Watcher()
        ours, theirs = socket.socketpair()
        try:

            def refuse(_: threading.Thread) -> None:
                raise RuntimeError("can't start new thread")

            with monkeypatch.context() as patched:
                patched.setattr(threading.Thread, "start", refuse)
                with pytest.raises(RuntimeError):
                    watcher.watch(Deadline(0.1), time.monotonic() + 0.1)
            later = Deadline(0.1)
            later.attach(SimpleNamespace(sock=ours))
            watcher.watch(later, time.monotonic() + 0.1)
            ours.settimeout(5.0)  # bounded: without a watcher nothing would ever cut it
            assert ours.recv(1) == b""
            assert later.expired
        finally:
            ours.close()
            theirs.close()
