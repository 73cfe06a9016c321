"""The buffer actor's ordering of the trainer's numbered batch requests (no Ray needed)."""

from __future__ import annotations

import asyncio

from ray_interactive.data.ordering import Turns as _Turns


def test_requests_are_served_in_order_and_a_new_stream_supersedes_the_old() -> None:
    async def scenario() -> list[tuple[int, int, bool]]:
        turns = _Turns(timeout=5)
        served: list[tuple[int, int, bool]] = []

        async def request(stream: int, seq: int, delay: float) -> None:
            await asyncio.sleep(delay)
            ok = await turns.acquire(stream, seq)
            served.append((stream, seq, ok))
            if ok:
                await asyncio.sleep(0)  # the work, during which others queue
                await turns.release(stream, seq)

        # 0.2 s apart: a stalled event loop must not make two arrivals coincide
        await asyncio.gather(
            request(1, 1, 0.00),  # arrives before its predecessor: must wait
            request(1, 0, 0.2),
            request(1, 2, 0.4),
            request(2, 1, 0.6),  # a new stream's second request, before its first
            request(2, 0, 0.8),
            request(1, 3, 1.0),  # late request of the old stream: stale
            request(2, 2, 1.2),
        )
        return served

    served = asyncio.run(scenario())
    assert [(s, q) for s, q, ok in served if ok] == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert (1, 3, False) in served


def test_a_late_release_of_a_superseded_stream_does_not_skip_a_turn() -> None:
    async def scenario() -> list[int]:
        turns = _Turns(timeout=5)
        assert await turns.acquire(1, 0)
        assert await turns.acquire(2, 0)  # stream 2 takes over while 1/0 is still "working"
        await turns.release(1, 0)  # must not advance stream 2
        order = []

        async def req(seq: int) -> None:
            assert await turns.acquire(2, seq)
            order.append(seq)
            await turns.release(2, seq)

        await turns.release(2, 0)
        await asyncio.gather(req(2), req(1))
        return order

    assert asyncio.run(scenario()) == [1, 2]
