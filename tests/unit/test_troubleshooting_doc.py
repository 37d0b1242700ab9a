"""docs/troubleshooting.md: an entry for every phase and condition reason; links that resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from slm_operator import api, refdoc

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"
REASONS_SECTION = "## Condition reasons"


def _text() -> str:
    return TROUBLESHOOTING.read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text from ``heading`` to the next heading of the same level."""
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start : end if end != -1 else len(text)]


def _entries(section: str) -> dict[str, str]:
    """``### `Name``` entries of a section, by name."""
    parts = re.split(r"^### `(\w+)`$", section, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _anchors(text: str) -> set[str]:
    in_code = False
    anchors = set()
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(refdoc.anchor(line.lstrip("#").strip()))
    return anchors


def test_every_reason_has_exactly_one_entry() -> None:
    entries = _entries(_section(_text(), REASONS_SECTION))
    wanted = [r.value for r in api.Reason]
    missing = sorted(set(wanted) - set(entries))
    assert not missing, f"reasons in api.py without an entry in docs/troubleshooting.md: {missing}"
    unknown = sorted(set(entries) - set(wanted))
    assert not unknown, f"entries for reasons api.py does not define: {unknown}"
    assert list(entries) == wanted, "keep the entries in api.py's order"


def test_each_reason_entry_names_the_condition_types_that_carry_it() -> None:
    entries = _entries(_section(_text(), REASONS_SECTION))
    for reason in api.Reason:
        set_on = re.search(r"^\*\*Set on:\*\* (.+)$", entries[reason.value], flags=re.MULTILINE)
        assert set_on, f"{reason.value}: no **Set on:** line"
        named = set(re.findall(r"`(\w+)`", set_on.group(1))) & {t.value for t in api.ConditionType}
        carriers = {t.value for t, reasons in api.CONDITION_REASONS.items() if reason in reasons}
        assert named == carriers, f"{reason.value}: **Set on:** names {named}, api.py {carriers}"


def test_each_entry_says_what_you_see_why_and_what_to_change() -> None:
    text = _text()
    entries = {
        **_entries(_section(text, REASONS_SECTION)),
        **{
            name.removeprefix("Phase "): body
            for name, body in re.findall(r"^### (Phase `\w+`)$(.*?)(?=^##)", text, re.M | re.S)
        },
    }
    for name, body in entries.items():
        for part in ("**What you see:**", "**Why:**", "**What to change:**"):
            assert part in body, f"{name}: no {part}"


def test_every_phase_has_an_entry() -> None:
    section = _section(_text(), "## Phases")
    names = re.findall(r"^### Phase `(\w+)`$", section, flags=re.MULTILINE)
    assert names == [p.value for p in api.Phase]


def test_runtime_and_pull_errors_are_covered() -> None:
    runtime = _section(_text(), "## Errors from the model's API")
    for heading in ("401", "429 or 503 with Retry-After", "context length", "model not found"):
        assert re.search(rf"^### .*{re.escape(heading)}", runtime, flags=re.MULTILINE), heading
    pull = _section(_text(), "## Pull errors")
    assert "sha256 mismatch for SOURCE: expected sha256:A, got sha256:B" in pull


def test_links_into_the_page_resolve() -> None:
    text = _text()
    anchors = _anchors(text)
    own = re.findall(r"\]\(#([\w-]+)\)", text)
    assert own
    assert sorted(set(own) - anchors) == []
    reference = (DOCS / "reference.md").read_text(encoding="utf-8")
    from_reference = re.findall(r"\(troubleshooting\.md#([\w-]+)\)", reference)
    assert from_reference
    assert sorted(set(from_reference) - anchors) == []


def test_links_to_other_docs_exist() -> None:
    for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", _text()):
        assert (DOCS / target).is_file(), target
