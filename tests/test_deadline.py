"""The upload deadline's watcher: one thread for every upload, each cut at its own time."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from bridge.delivery.deadline import Deadline


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
