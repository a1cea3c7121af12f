"""The cases of the mapping's golden test (tests/test_mapping_golden.py), and their outcomes.

Why a golden file: the mapping is tuned for speed (issue 16) and must stay byte-for-byte what it
was. The tests that name expected values check what a reader cares about; this one checks
everything, for many bodies and configurations: every stored byte of every message (payload,
messageId, userId, destination, hold, rank), the dead-letter reason, the portal and the trim
reasons, as ``bridge.mapping.intake.process`` returns them.

Two files under tests/golden/:

- ``outcomes.json``: the full outcome of each case (samples, variants, size bodies, the bench
  body) under each configuration of :data:`CONFIGS`;
- ``mutations.json``: for each code, configuration and key path of the sample, the SHA-256 of
  the outcomes of that part replaced by each of :data:`REPLACEMENTS` (thousands of cases: the
  digest keeps the file small; a failure names the path, and ``outcome`` shows what it gives).

Regenerate (only when a change of output is intended, and say so in the commit):
``.venv/bin/python -m tests.golden_cases``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson

from bridge import config as config_module
from bridge.config import Config
from bridge.errors import InvalidPayloadError
from bridge.mapping import intake
from bridge.synap import samples
from tests.test_mapping_hostile import mutated, paths

GOLDEN = Path(__file__).parent / "golden"
OUTCOMES = GOLDEN / "outcomes.json"
MUTATIONS = GOLDEN / "mutations.json"
#: 2024-06-01T12:00:00Z, and a receipt time with a fraction of a millisecond.
RECEIVED = 1717243200.0
RECEIVED_ODD = 1717243200.123456
CODES = [*samples.codes()]

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "question_data": {"mapping": {"include_question_data": True}},
    "no_context_traits": {"mapping": {"context_traits": False}},
    "identify_from_events": {"mapping": {"identify_from_events": True}},
    "custom": {
        "mapping": {
            "trait_prefix": "",
            "drop_properties": ["score", "comment"],
            "drop_traits": ["email"],
            "add_properties": {"source": "synap", "n": 1, "nested": {"a": [1, "b"]}},
            "include_question_data": True,
            "identify_from_events": True,
            "exam_attempts_from": "exam_codes",
            "exam_hold_secs": 3.5,
            "default_portal_id": "portal_default",
            "codes": {
                "exam.completed": {
                    "event": "Exam Done",
                    "drop_properties": ["tags"],
                    "add_properties": {"x": [1, 2]},
                },
                "user.registered": {"track": False},
                "user.addedToGroup": {"group": False},
                "invite.sent": {"enabled": False},
            },
        },
        "routing": {
            "destinations": {
                "north": {"sub_portal_ids": ["sub_north"]},
                "kings": {"portal_ids": ["portal_kings", "7"]},
            }
        },
    },
    "strict_routing": {
        "mapping": {"exam_results_released_code": "exam.released"},
        "routing": {
            "destinations": {"kings": {"portal_ids": ["portal_kings"]}},
            "default_destination": None,
        },
    },
}

#: What a part of a sample is replaced by in the mutation sweep (``deleted`` removes the key).
REPLACEMENTS: list[tuple[str, Any]] = [
    ("deleted", None),
    ("null", None),
    ("number", 12345),
    ("float", -0.5),
    ("huge", 2**70),
    ("numeric_text", " 42 "),
    ("text", "surprise"),
    ("time_text", "2024-05-14T09:41:27Z"),
    ("empty_text", ""),
    ("list", ["x", 1, None]),
    ("object", {"unexpected": {"deeper": [1, 2]}}),
    ("bool", True),
]

ISO_TEXT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def configs() -> dict[str, Config]:
    return {name: config_module.parse(data) for name, data in CONFIGS.items()}


def outcome(
    code: str, raw: bytes, config: Config, received: float = RECEIVED, hint: str | None = None
) -> dict[str, Any]:
    """Everything ``intake.process`` decides, as JSON-able data (payloads as their text)."""
    try:
        got = intake.process(code, raw, received, config, hint)
    except InvalidPayloadError as exc:
        return {"invalid": [exc.code, exc.detail]}
    webhook = got.webhook
    return {
        "webhook": [webhook.code, webhook.portal_id, webhook.received_at, webhook.raw_body == raw],
        "dead": None if got.dead is None else [got.dead.reason, got.dead.detail],
        "trimmed": got.trimmed,
        "messages": [
            {
                "message_id": message.message_id,
                "destination": message.destination,
                "user_id": message.user_id,
                "hold_secs": message.hold_secs,
                "rank": message.rank,
                "payload": message.payload.decode("utf-8"),
            }
            for message in got.messages
        ],
    }


# --- the bodies -------------------------------------------------------------------------------


def sample(code: str) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(samples.raw(code))
    return loaded


def dumps(body: Any) -> bytes:
    """JSON as a client would send it (the standard library: it writes any integer)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def transformed(node: Any, change: Any) -> Any:
    """``node`` with every scalar passed through ``change`` (containers rebuilt)."""
    if isinstance(node, dict):
        return {key: transformed(value, change) for key, value in node.items()}
    if isinstance(node, list):
        return [transformed(value, change) for value in node]
    return change(node)


def numbers_as_text(value: Any) -> Any:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def time_variant(kind: str) -> Any:
    """A change that rewrites every ISO time text in a body into another accepted form."""

    def change(value: Any) -> Any:
        if not (isinstance(value, str) and ISO_TEXT.match(value)):
            return value
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        epoch = moment.timestamp()
        forms: dict[str, Any] = {
            "epoch_ms": int(epoch * 1000),
            "epoch_s": epoch,
            "epoch_text": str(int(epoch)),
            "epoch_ms_text": f"{epoch * 1000:.1f}",
            "new_date": f"new Date('{value}')",
            "offset": moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
            "no_millis": value[:19] + "Z",
            "micros": value[:19] + ".123456Z",
            "lower_z": value[:-1] + "z" if value.endswith("Z") else value,
            "naive": value[:19],
            "date_only": value[:10],
            "spaced": f"  {value}  ",
            "pre_1970": "1969-12-31T23:59:59.999Z",
            "far_future": "9999-12-31T23:59:59.999-05:00",
            "garbage": value[:10] + "T25:61:00.000Z",
            "leap": "2024-02-29T00:00:00.000Z",
            "not_leap": "2023-02-29T00:00:00.000Z",
            "year_zero_pad": "0999-01-01T00:00:00.000Z",
            "fractions_4": value[:19] + ".1234Z",
            "fractions_1": value[:19] + ".5Z",
            "space_separator": value[:10] + " " + value[11:],
        }
        return forms[kind]

    return change


TIME_KINDS = [
    "epoch_ms",
    "epoch_s",
    "epoch_text",
    "epoch_ms_text",
    "new_date",
    "offset",
    "no_millis",
    "micros",
    "lower_z",
    "naive",
    "date_only",
    "spaced",
    "pre_1970",
    "far_future",
    "garbage",
    "leap",
    "not_leap",
    "year_zero_pad",
    "fractions_4",
    "fractions_1",
    "space_separator",
]


def ids_as_numbers(body: dict[str, Any]) -> dict[str, Any]:
    text = (
        json.dumps(body)
        .replace('"usr_7f3a9c21"', "7321")
        .replace('"usr_teacher01"', "1001")
        .replace('"att_51c0e8"', "510")
        .replace('"portal_kings"', "7")
    )
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def size_bodies() -> Iterator[tuple[str, str, bytes]]:
    """Bodies that the size limit has to cut (and one that it does not)."""
    body = sample("exam.completed")
    body["attempt"]["state"]["responseQuestionMap"] = [[f"q{i}"] for i in range(2000)]
    yield "size/questions_2000", "exam.completed", dumps(body)
    body = sample("exam.completed")
    body["attempt"]["state"]["responseQuestionMap"] = [
        [f"question_{i:05d}", f"response_{i:05d}"] for i in range(2000)
    ]
    body["attempt"]["state"]["sections"]["items"] = [
        {"sectionId": f"s{k}", "responseIds": [f"rsp_{k}_{i:05d}" for i in range(400)]}
        for k in range(5)
    ]
    yield "size/questions_and_sections", "exam.completed", dumps(body)
    body = sample("exam.completed")
    body["exam"]["sectionGrades"] = [
        {"id": f"sg{i}", "marks": {"points": i, "maxPoints": "20"}, "extra": "x" * 50}
        for i in range(600)
    ]
    body["attempt"]["tags"] = {f"tag{i}": [f"value{i}"] * 5 for i in range(300)}
    yield "size/section_grades_and_tags", "exam.completed", dumps(body)
    body = sample("user.registered")
    body["customAttributes"] = {f"attr{i:03d}": "v" * (i * 7) for i in range(150)}
    yield "size/identify_attributes", "user.registered", dumps(body)
    body = sample("user.registered")
    body["name"] = "N" * 40_000
    body["customAttributes"] = {"big": "x" * 40_000}
    yield "size/identify_essentials", "user.registered", dumps(body)
    body = sample("exam.completed")
    body["user"]["customAttributes"] = {f"c{i}": "y" * 500 for i in range(80)}
    yield "size/context_traits", "exam.completed", dumps(body)
    body = sample("exam.completed")
    body["test"]["title"] = "T" * 40_000
    yield "size/long_title", "exam.completed", dumps(body)


def odd_bodies() -> Iterator[tuple[str, str, bytes]]:
    """Edge bodies: not JSON, not objects, wrong names, odd texts and numbers."""
    yield "odd/invalid_json", "exam.completed", b'{"id": '
    yield "odd/array", "exam.completed", b"[1, 2]"
    yield "odd/null", "exam.completed", b"null"
    yield "odd/empty_object", "exam.completed", b"{}"
    yield "odd/unknown_code", "no.such.code", samples.raw("exam.completed")
    mismatch = sample("exam.completed") | {"meta": {"eventName": "exam.started"}}
    yield "odd/event_name_mismatch", "exam.completed", dumps(mismatch)
    alias = sample("assignment.complete") | {"meta": {"eventName": "assignment.completed"}}
    yield "odd/event_name_alias", "assignment.complete", dumps(alias)
    yield (
        "odd/surrogates_and_big_numbers",
        "user.registered",
        b'{"objectId": "u1", "name": "Bad \\ud800 Name", "email": null, "customAttributes": '
        b'{"huge": 123456789012345678901234567890, "\\udfff": "key"}}',
    )
    deep: Any = "bottom"
    for _ in range(40):
        deep = {"d": deep, "l": [deep] if isinstance(deep, str) else []}
    yield (
        "odd/deep_attributes",
        "user.registered",
        dumps(sample("user.registered") | {"customAttributes": deep}),
    )
    unicode = sample("exam.completed")
    unicode["user"]["name"] = "  José Ñúñez García  "
    unicode["test"]["title"] = "Biologie \u2013 Zellen 山田\u3000太郎"
    unicode["attempt"]["tags"] = {"ключ": ["значение", 7, None, True], "n": "not a list"}
    yield "odd/unicode", "exam.completed", dumps(unicode)
    numbers = sample("exam.completed")
    numbers["attempt"].update(
        score="82.5",
        scoreFrac=" 0.825 ",
        totalQuestions="12",
        isExam="false",
        totalAnswered="1e3",
        totalAnsweredCorrectly="-0",
        timeSpentInMs="12.0",
        marks={"points": "inf", "maxPoints": "nan", "credits": 2**64, "penalties": "-3"},
    )
    numbers["attempt"]["grade"] = "Merit"
    numbers["attempt"]["gradeCriteria"] = [{"label": "A", "minScore": "90"}, "B", 3, None]
    numbers["exam"] = {
        "id": 99,
        "sectionGrades": [
            {"id": 5, "marks": {"points": "7", "other": "x"}, "note": "n"},
            {"marks": "bad"},
            {"id": "  ", "marks": None},
            {"id": "s", "marks": {}},
        ],
        "attr": {"a": 1.5, "b": [1, {"c": None}]},
        "sourceTests": ["t1", 2, None, 3.5, True],
    }
    yield "odd/numbers_as_text_and_odd_shapes", "exam.completed", dumps(numbers)
    released = sample("exam.resultsReleased")
    released["attempt"]["audit"] = {
        "finalisedBy": "usr_teacher01",
        "finalisedAt": 1715677288020,
        "releasedBy": None,
        "releasedAt": "new Date('2024-05-15T08:00:00+01:00')",
    }
    yield "odd/released_audit", "exam.resultsReleased", dumps(released)
    sections = sample("exam.completed")
    sections["attempt"]["state"]["sections"] = [
        {"sectionId": "bare", "marks": {"points": 1}},
        "not an object",
    ]
    yield "odd/sections_as_list", "exam.completed", dumps(sections)
    for stage in ("started", "submitted", "completed"):
        for prefix in ("attempt", "exam"):
            code = f"{prefix}.{stage}"
            body = sample(f"exam.{stage}" if code == "exam.started" else code)
            body["attempt"]["isExam"] = prefix == "exam" or stage != "started"
            yield f"odd/stage_{code}", code, dumps(body)


def variant_bodies() -> Iterator[tuple[str, str, bytes]]:
    """Each sample, and each sample with its numbers as text, its ids as numbers, its times in
    every accepted (and some refused) form."""
    for code in CODES:
        body = sample(code)
        yield f"sample/{code}", code, samples.raw(code)
        yield f"numbers_as_text/{code}", code, dumps(transformed(body, numbers_as_text))
        yield f"ids_as_numbers/{code}", code, dumps(ids_as_numbers(body))
        for kind in TIME_KINDS:
            yield f"times_{kind}/{code}", code, dumps(transformed(body, time_variant(kind)))
        for key in body:
            yield f"without_{key}/{code}", code, dumps({k: v for k, v in body.items() if k != key})


def bench_bodies() -> Iterator[tuple[str, str, bytes]]:
    from bench import body  # the bench package is only needed here

    for index in range(2):
        yield f"bench/{index}", "exam.completed", body.render(*body.ids("golden", index))


def all_bodies() -> list[tuple[str, str, bytes]]:
    return [*variant_bodies(), *size_bodies(), *odd_bodies(), *bench_bodies()]


#: Cases mapped under every configuration (the rest under default and question_data only).
EVERY_CONFIG_PREFIXES = ("sample/", "odd/", "bench/")


def case_configs(name: str) -> list[str]:
    if name.startswith(EVERY_CONFIG_PREFIXES):
        return list(CONFIGS)
    if name.startswith("size/"):  # large outputs: the configurations that change their cuts
        return ["default", "question_data", "custom"]
    return ["default", "custom"]


def all_outcomes() -> dict[str, Any]:
    loaded = configs()
    result: dict[str, Any] = {}
    for name, code, raw in all_bodies():
        for config_name in case_configs(name):
            received = RECEIVED_ODD if name.startswith("odd/") else RECEIVED
            hint = "portal_hint" if config_name == "no_context_traits" else None
            key = f"{name} @{config_name}"
            result[key] = outcome(code, raw, loaded[config_name], received, hint)
    return result


# --- the mutation sweep -----------------------------------------------------------------------

# The sweep walks and replaces parts of a body as the hostile-input tests do
# (tests/test_mapping_hostile.py: ``paths``, ``mutated``).


MUTATION_CONFIGS = ("default", "custom")


def mutation_digests(code: str) -> dict[str, str]:
    """``"<config> <path>"`` -> SHA-256 of the outcomes of every replacement of that part."""
    loaded = configs()
    body = sample(code)
    result: dict[str, str] = {}
    for path in paths(body):
        raws = [
            dumps(mutated(body, path, value, delete=kind == "deleted"))
            for kind, value in REPLACEMENTS
        ]
        for config_name in MUTATION_CONFIGS:
            found = [outcome(code, raw, loaded[config_name]) for raw in raws]
            digest = hashlib.sha256(orjson.dumps(found)).hexdigest()
            result[f"{config_name} {'/'.join(map(str, path))}"] = digest
    return result


def all_mutations() -> dict[str, dict[str, str]]:
    return {code: mutation_digests(code) for code in CODES}


def write() -> None:
    GOLDEN.mkdir(exist_ok=True)
    options = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    OUTCOMES.write_bytes(orjson.dumps(all_outcomes(), option=options))
    MUTATIONS.write_bytes(orjson.dumps(all_mutations(), option=options))


if __name__ == "__main__":
    write()
