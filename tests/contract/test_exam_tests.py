"""The exam tests the store remembers (bridge.mapping.exam_tests): every backend keeps the
``(portal, test id)`` pairs ``exam.*`` webhooks named, once each, for the mapping of later
``attempt.*`` webhooks."""

from __future__ import annotations

from bridge.store import Store


class TestExamTests:
    async def test_learn_once_and_read_back(self, store: Store) -> None:
        assert await store.known_exam_tests() == frozenset()
        assert await store.learn_exam_tests([("p1", "t1"), ("p1", "t2"), ("", "t1")], 1.0) == 3
        assert await store.learn_exam_tests([("p1", "t1"), ("p2", "t1")], 2.0) == 1
        assert await store.learn_exam_tests([], 3.0) == 0
        known = await store.known_exam_tests()
        assert known == {("p1", "t1"), ("p1", "t2"), ("", "t1"), ("p2", "t1")}

    async def test_any_text_is_kept(self, store: Store) -> None:
        odd = ("portal ü", "t\u200f" + "x" * 250)
        await store.learn_exam_tests([odd], 1.0)
        assert odd in await store.known_exam_tests()
