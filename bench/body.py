"""A realistic ``exam.completed`` webhook body (~6 KB), with slots for the ids that must vary.

Why slots: message ids are derived from the user and attempt ids, so a load generator that posts
the same body again and again would measure de-duplication, not intake. Every request therefore
gets its own user and attempt id; the rest of the body (a 64-question exam with its response
map, sections, tags, marks, grade and certificate, the documented shape) stays the same.

The template is plain JSON text with two markers; :func:`parts` splits it for the wrk Lua script,
:func:`render` fills it in Python (the end-to-end generator and the backlog builder).
"""

from __future__ import annotations

from typing import Any

import orjson

USER_SLOT = "@@USER@@"
ATTEMPT_SLOT = "@@ATTEMPT@@"
SLOTS = (USER_SLOT, ATTEMPT_SLOT)
QUESTIONS = 64
SECTIONS = 2


def _section(index: int, per_section: int) -> dict[str, Any]:
    first = index * per_section
    return {
        "sectionId": f"sec{index:02d}Xy7Lm2Qa",
        "responseIds": [f"r{first + q:03d}Kp9Zt4Wq" for q in range(per_section)],
        "isOpen": False,
        "isUnlocked": True,
        "isCompleted": True,
        "totalQuestionsCompleted": per_section,
        "totalQuestionsSkipped": 0,
        "marks": {"points": 14, "maxPoints": 20, "credits": 14, "penalties": 0},
        "timeStarted": "2026-11-03T09:00:04.112Z",
        "timeCompleted": "2026-11-03T09:41:52.908Z",
        "timeSpentInMs": 2_508_796,
        "score": 70,
        "scoreFrac": 0.7,
        "totalCorrect": 14,
    }


def document() -> dict[str, Any]:
    """The body as a dict, with the slot markers in place of the user and attempt ids."""
    per_section = QUESTIONS // SECTIONS
    tags = {
        "nonFacetTags": ["mock-exam", "autumn-sitting"],
        "skill": ["analysis", "recall"],
        "difficulty": ["medium"],
        "subtopic": ["thermodynamics", "kinematics", "optics"],
        "topic": ["physics"],
        "subject": ["science"],
        "module": ["PHY-201"],
        "exam": ["PHY-201 final"],
    }
    state = {
        "responseQuestionMap": [
            [f"r{q:03d}Kp9Zt4Wq", f"q{q:03d}Hn3Vb8Rs"] for q in range(QUESTIONS)
        ],
        "isRevoked": False,
        "isStarted": True,
        "timeStarted": "2026-11-03T09:00:04.112Z",
        "timeCompleted": "2026-11-03T10:23:41.501Z",
        "timeSpentInMs": 5_017_389,
        "results": {"markingStatus": "marked", "pendingMarks": 0, "status": "passed"},
        "sections": {"items": [_section(s, per_section) for s in range(SECTIONS)]},
    }
    grade = {"label": "Merit", "minScore": 65, "isPass": True}
    return {
        "id": ATTEMPT_SLOT,
        "score": 71,
        "scoreFrac": 0.71,
        "timeStarted": "2026-11-03T09:00:04.112Z",
        "timeCompleted": "2026-11-03T10:23:41.501Z",
        "timeSpentInMs": 5_017_389,
        "user": {
            "id": USER_SLOT,
            "name": "Grace Hopper",
            "email": "grace.hopper@example.org",
            "customAttributes": {
                "studentNumber": "S2026-004711",
                "cohort": "2026-autumn",
                "campus": "North",
                "fundingBody": None,
                "extraTime": True,
                "yearOfStudy": 2,
            },
            "subPortalId": "subPortal7Qx",
        },
        "portal": {"id": "portalAc9Rz"},
        "meta": {"timestamp": "2026-11-03T10:23:42.017Z"},
        "test": {"id": "testPhy201Final", "title": "PHY-201 Final examination"},
        "attempt": {
            "score": 71,
            "scoreFrac": 0.71,
            "totalAnsweredCorrectly": 28,
            "id": ATTEMPT_SLOT,
            "isExam": True,
            "state": state,
            "marks": {"points": 28.5, "maxPoints": 40, "credits": 28.5, "penalties": 0},
            "totalQuestions": QUESTIONS,
            "tags": tags,
            "totalAnswered": QUESTIONS,
            "timeStarted": "2026-11-03T09:00:04.112Z",
            "timeCompleted": "2026-11-03T10:23:41.501Z",
            "timeSpentInMs": 5_017_389,
            "grade": grade,
            "gradeCriteria": {
                "grades": [
                    {"label": "Distinction", "minScore": 80, "isPass": True},
                    grade,
                    {"label": "Pass", "minScore": 50, "isPass": True},
                    {"label": "Fail", "minScore": 0, "isPass": False},
                ]
            },
        },
        "exam": {
            "id": "examPhy201Final2026",
            "name": "PHY-201 Final examination (autumn 2026)",
            "resitCount": 0,
            "sourceTests": ["testPhy201Final"],
            "sectionGrades": [
                {"id": f"sec{s:02d}Xy7Lm2Qa", "marks": {"points": 14, "maxPoints": 20}}
                for s in range(SECTIONS)
            ],
        },
        "userGroup": {"id": "groupPhy201A", "name": "PHY-201 group A"},
        "certificate": {
            "url": "https://certificates.example.org/c/8f14e45fceea167a5a36dedd4bea2543",
            "certificatePdfPath": "certificates/2026/portalAc9Rz/8f14e45fceea167a.pdf",
        },
    }


def template() -> str:
    """The body as compact JSON text with the slot markers (as Node's JSON.stringify sends it)."""
    return orjson.dumps(document()).decode()


def parts() -> tuple[list[str], list[str]]:
    """``(texts, slots)``: the template is texts[0] + value(slots[0]) + texts[1] + ...

    So a generator fills in ``len(slots)`` values and joins ``len(slots) + 1`` texts.
    """
    text = template()
    texts: list[str] = []
    slots: list[str] = []
    position = 0
    while True:
        found = [(text.find(s, position), s) for s in SLOTS if text.find(s, position) >= 0]
        if not found:
            texts.append(text[position:])
            return texts, slots
        at, slot = min(found)
        texts.append(text[position:at])
        slots.append(slot)
        position = at + len(slot)


def ids(tag: str, number: int) -> tuple[str, str]:
    """The user and attempt ids of request ``number`` (the same rule as the Lua script)."""
    return f"u-{tag}-{number}", f"a-{tag}-{number}"


def render(user_id: str, attempt_id: str) -> bytes:
    text = template().replace(USER_SLOT, user_id).replace(ATTEMPT_SLOT, attempt_id)
    return text.encode()
