"""Chat records (the JSONL training format) to and from cases."""

from __future__ import annotations

import json
from pathlib import Path

from harness.atomic import staged_file
from harness.schema import dumps
from scenarios.notes import Case


def to_record(case: Case) -> dict:
    return {"messages": [{"role": "user", "content": case.note},
                         {"role": "assistant", "content": dumps(case.expected)}]}


def from_record(record: dict, case_id: str) -> Case:
    """Inverse of `to_record`; raises ValueError naming what is wrong with a malformed record."""
    try:
        user, assistant = record["messages"]
        if (user["role"], assistant["role"]) != ("user", "assistant"):
            raise ValueError("roles must be user then assistant")
        return Case(id=case_id, note=user["content"], expected=json.loads(assistant["content"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{case_id}: not a chat record with a user note and an assistant summary ({exc})") from exc


def write_jsonl(path: Path, rows) -> None:
    """Write rows as JSONL atomically (a reader never sees a half-written file)."""
    with staged_file(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_cases(path: Path) -> list[Case]:
    """Cases from a chat-record JSONL file; ids are '<file stem>-<line number>'."""
    cases = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                case_id = f"{Path(path).stem}-{number:03d}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
                cases.append(from_record(record, case_id))
    return cases
