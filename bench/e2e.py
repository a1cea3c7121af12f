"""End-to-end latency: from POST to arrival at the fake Segment, at a steady webhook rate.

An open-loop generator (each request leaves at its scheduled time, whether or not earlier ones
have been answered, so a slow bridge cannot slow the load down) posts fresh ``exam.completed``
bodies, one user id each, with the default batch settings (``timeout_secs`` 1.0). The fake
records when each user's message arrives (``bench.fake``); latency = arrival - send time, both
wall-clock times on this machine. The generator is Python (aiohttp): at 200 requests/s it uses
a few percent of a core, which is why wrk is not needed here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp

from bench import body, procs

PATH = "/webhooks/synap/exam.completed"


@dataclass
class E2EResult:
    rate: float
    seconds: float
    sent: int
    ok: int
    arrived: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    answer_p50_ms: float
    answer_p99_ms: float
    requests: int = 0  # batch requests the fake Segment received
    accepted: int = 0  # messages it accepted

    @property
    def requests_per_1000(self) -> float:
        return 1000 * self.requests / self.accepted if self.accepted else 0.0


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


async def _load(url: str, rate: float, seconds: float) -> tuple[dict[str, float], list[float]]:
    sent: dict[str, float] = {}
    answers: list[float] = []
    total = int(rate * seconds)
    headers = {"Authorization": procs.basic_auth(), "Content-Type": "application/json"}

    async def one(session: aiohttp.ClientSession, number: int) -> None:
        user, attempt = body.ids("e2e", number)
        data = body.render(user, attempt)
        started = time.time()
        async with session.post(url, data=data, headers=headers) as answer:
            await answer.read()
            if answer.status == 200:
                sent[user] = started
                answers.append(time.time() - started)

    connector = aiohttp.TCPConnector(limit=256)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        origin = time.monotonic()
        for number in range(total):
            delay = origin + number / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, number)))
        await asyncio.gather(*tasks, return_exceptions=True)
    return sent, answers


def run(rate: float, seconds: float) -> E2EResult:
    db = procs.fresh_db("e2e")
    with procs.running(procs.fake_segment("fake-e2e")) as fake:
        config = procs.bridge_config(db, procs.free_port(), fake.url)
        with procs.running(procs.bridge("bridge-e2e", config)) as bridge:
            sent, answers = asyncio.run(_load(bridge.url + PATH, rate, seconds))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if int(procs.get_json(fake.url + "/_stats")["unique"]) >= len(sent):
                    break
                time.sleep(0.1)
            arrivals = procs.get_json(fake.url + "/_arrivals", timeout=30)
            stats = procs.get_json(fake.url + "/_stats")
    latencies = [arrivals[user][1] - at for user, at in sent.items() if user in arrivals]
    return E2EResult(
        rate=rate,
        seconds=seconds,
        sent=int(rate * seconds),
        ok=len(sent),
        arrived=len(latencies),
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        max_ms=max(latencies, default=float("nan")) * 1000,
        answer_p50_ms=percentile(answers, 0.50) * 1000,
        answer_p99_ms=percentile(answers, 0.99) * 1000,
        requests=int(stats["requests"]),
        accepted=int(stats["accepted"]),
    )
