"""The notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bridge.systemd import Notifier, socket_address, watchdog_loop, watchdog_usec
from tests.process import BridgeProcess, write_config

RECV_TIMEOUT = 5.0


class FakeSystemd:
    """The receiving end of ``$NOTIFY_SOCKET``: a bound datagram socket we read from."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def receive(self, timeout: float = RECV_TIMEOUT) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    async def areceive(self, within: float = RECV_TIMEOUT) -> bytes:
        self.sock.setblocking(False)
        try:
            async with asyncio.timeout(within):
                return await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        finally:
            self.sock.setblocking(True)

    def nothing_waiting(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.sock.setblocking(True)
        return False


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        yield FakeSystemd(sock, str(path))


@pytest.fixture
def abstract_systemd() -> Iterator[FakeSystemd]:
    name = f"synap-bridge-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        yield FakeSystemd(sock, "@" + name)


def notifier_for(fake: FakeSystemd, **extra: str) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": fake.env_value, **extra}, pid=4242)


class TestDatagrams:
    def test_ready(self, systemd: FakeSystemd) -> None:
        assert notifier_for(systemd).ready() is True
        assert systemd.receive() == b"READY=1"

    def test_ready_with_status(self, systemd: FakeSystemd) -> None:
        notifier_for(systemd).ready("listening on 127.0.0.1:8080")
        assert systemd.receive() == b"READY=1\nSTATUS=listening on 127.0.0.1:8080"

    def test_stopping(self, systemd: FakeSystemd) -> None:
        notifier_for(systemd).stopping()
        assert systemd.receive() == b"STOPPING=1"

    def test_watchdog(self, systemd: FakeSystemd) -> None:
        notifier_for(systemd).watchdog()
        assert systemd.receive() == b"WATCHDOG=1"

    def test_status_is_one_line(self, systemd: FakeSystemd) -> None:
        notifier_for(systemd).status("draining\n3 batches\tleft ")
        assert systemd.receive() == b"STATUS=draining 3 batches left"

    def test_reloading_carries_monotonic_time(self, systemd: FakeSystemd) -> None:
        notifier_for(systemd).reloading(monotonic_usec=123456)
        assert systemd.receive() == b"RELOADING=1\nMONOTONIC_USEC=123456"

    def test_reloading_defaults_to_now(self, systemd: FakeSystemd) -> None:
        before = time.monotonic_ns() // 1000
        notifier_for(systemd).reloading()
        head, usec = systemd.receive().split(b"\nMONOTONIC_USEC=")
        assert head == b"RELOADING=1"
        assert int(usec) >= before

    def test_abstract_socket(self, abstract_systemd: FakeSystemd) -> None:
        notifier = notifier_for(abstract_systemd)
        assert notifier.address == b"\0" + abstract_systemd.env_value[1:].encode()
        assert notifier.ready() is True
        assert abstract_systemd.receive() == b"READY=1"

    def test_in_order(self, systemd: FakeSystemd) -> None:
        notifier = notifier_for(systemd)
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert [systemd.receive() for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


class TestWithoutSystemd:
    def test_no_socket_means_no_op(self) -> None:
        notifier = Notifier.from_environ({}, pid=1)
        assert notifier.enabled is False
        assert notifier.ready() is False
        assert notifier.stopping() is False
        assert notifier.watchdog() is False
        assert notifier.status("x") is False
        assert notifier.watchdog_interval is None

    def test_empty_or_unsupported_address_is_no_op(self) -> None:
        assert socket_address("") is None
        assert socket_address("vsock:2:1234") is None
        assert Notifier.from_environ({"NOTIFY_SOCKET": ""}).enabled is False

    def test_from_real_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
        assert Notifier.from_environ().enabled is False

    def test_dead_socket_is_reported_not_raised(self, tmp_path: Path) -> None:
        notifier = Notifier(str(tmp_path / "gone.sock"))
        assert notifier.ready() is False
        assert notifier.watchdog() is False


class TestWatchdogInterval:
    def test_parsed_for_this_process(self) -> None:
        env = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}
        assert watchdog_usec(env, pid=4242) == 30_000_000

    def test_without_pid_it_is_ours(self) -> None:
        assert watchdog_usec({"WATCHDOG_USEC": "5000000"}, pid=7) == 5_000_000

    def test_meant_for_another_process(self) -> None:
        assert watchdog_usec({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2) is None

    @pytest.mark.parametrize("raw", ["", "0", "-5", "30s", "1.5"])
    def test_invalid_values_mean_no_watchdog(self, raw: str) -> None:
        assert watchdog_usec({"WATCHDOG_USEC": raw}, pid=1) is None

    def test_ping_every_half_interval(self, systemd: FakeSystemd) -> None:
        notifier = notifier_for(systemd, WATCHDOG_USEC="30000000", WATCHDOG_PID="4242")
        assert notifier.watchdog_interval == 15.0

    def test_no_interval_without_socket(self) -> None:
        assert Notifier.from_environ({"WATCHDOG_USEC": "30000000"}, pid=1).watchdog_interval is None

    def test_from_real_pid(self, systemd: FakeSystemd) -> None:
        env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "2000000"}
        env["WATCHDOG_PID"] = str(os.getpid())
        assert Notifier.from_environ(env).watchdog_interval == 1.0


class TestWatchdogLoop:
    async def test_pings_then_waits_half_the_interval(self, systemd: FakeSystemd) -> None:
        notifier = notifier_for(systemd, WATCHDOG_USEC="4000000")
        waits: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            waits.append(seconds)
            if len(waits) == 3:
                raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await watchdog_loop(notifier, sleep=fake_sleep)
        assert waits == [2.0, 2.0, 2.0]
        assert [systemd.receive() for _ in range(3)] == [b"WATCHDOG=1"] * 3
        assert systemd.nothing_waiting()

    async def test_returns_at_once_without_watchdog(self, systemd: FakeSystemd) -> None:
        calls: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            calls.append(seconds)

        await asyncio.wait_for(watchdog_loop(notifier_for(systemd), sleep=fake_sleep), 1.0)
        assert calls == []
        assert systemd.nothing_waiting()

    async def test_real_sleep_keeps_pinging_until_cancelled(self, systemd: FakeSystemd) -> None:
        notifier = notifier_for(systemd, WATCHDOG_USEC="20000")  # a ping every 10 ms
        task = asyncio.create_task(watchdog_loop(notifier))
        loop = asyncio.get_running_loop()
        try:
            for _ in range(3):
                got = await asyncio.wait_for(loop.run_in_executor(None, systemd.receive), 5.0)
                assert got == b"WATCHDOG=1"
        finally:
            task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


class TestRealServe:
    """``python -m bridge serve`` under a fake systemd: READY=1, a watchdog ping, STOPPING=1."""

    async def test_ready_then_stopping_on_sigterm(
        self, systemd: FakeSystemd, tmp_path: Path
    ) -> None:
        config = write_config(
            tmp_path / "config.yaml",
            {
                "server": {"host": "127.0.0.1", "port": 0},
                "storage": {"path": str(tmp_path / "state" / "bridge.db")},
                "logging": {"format": "json"},
            },
        )
        env = {"NOTIFY_SOCKET": systemd.env_value, "WATCHDOG_USEC": "60000000"}
        bridge = BridgeProcess(config, env=env)
        bridge.env.pop("WATCHDOG_PID", None)  # in case the test runner itself has a watchdog
        try:
            port = await bridge.start()
            assert await systemd.areceive() == b"READY=1"
            # READY=1 came after the bind: the liveness probe answers.
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/healthz") as answer,
            ):
                assert answer.status == 200
            # The watchdog task pings from the event loop as soon as it runs.
            assert await systemd.areceive() == b"WATCHDOG=1"
            assert bridge.proc is not None
            bridge.proc.send_signal(signal.SIGTERM)
            assert await systemd.areceive() == b"STOPPING=1"
            assert await bridge.wait() == 0, "\n".join(bridge.raw)
        finally:
            await bridge.close()
