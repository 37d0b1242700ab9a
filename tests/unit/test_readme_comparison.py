"""README "How it compares": every claim has a source, and our own sources exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PEERS = ("KubeAI", "llmaz", "KAITO", "KServe", "LLMKube", "ollama-operator")


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## How it compares\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _rows() -> list[list[str]]:
    lines = [line for line in _section().splitlines() if line.startswith("| ")]
    rows = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    assert rows[0] == ["feature", "slm-operator", *PEERS]
    return rows[2:]


def _footnotes() -> dict[str, str]:
    return dict(re.findall(r"^\[\^([\w-]+)\]: (.+)$", _section(), flags=re.MULTILINE))


def test_every_peer_cell_cites_a_source_or_says_not_documented() -> None:
    rows = _rows()
    assert len(rows) == 15
    for row in rows:
        assert len(row) == 2 + len(PEERS), row[0]
        for peer, cell in zip(PEERS, row[2:], strict=True):
            assert "[^" in cell or cell.startswith("not documented"), f"{row[0]} / {peer}: {cell}"


def test_every_cited_footnote_is_defined_and_peers_cite_urls() -> None:
    notes = _footnotes()
    cited = set(re.findall(r"\[\^([\w-]+)\]", "\n".join(" ".join(r) for r in _rows())))
    assert cited <= set(notes), sorted(cited - set(notes))
    for name, body in notes.items():
        if not name.startswith("slm-"):
            assert body.startswith("https://"), name


def test_our_claims_point_at_docs_and_tests_that_exist() -> None:
    notes = {k: v for k, v in _footnotes().items() if k.startswith("slm-")}
    assert all(row[1].count("[^slm-") >= 1 for row in _rows())
    for name, body in notes.items():
        docs = re.findall(r"\]\(([\w/.-]+\.md)(?:#[\w-]+)?\)", body)
        assert docs, f"{name} links no doc"
        for doc in docs:
            assert (ROOT / doc).is_file(), doc
        tests = re.findall(r"`(tests/[\w/]+\.py)((?:::\w+)?)`", body)
        assert tests, f"{name} names no test"
        current = ""
        for path, function in tests:
            current = path
            source = (ROOT / current).read_text(encoding="utf-8")
            if function:
                assert f"def {function[2:]}(" in source, f"{name}: {path}{function}"
        for function in re.findall(r"`::(\w+)`", body):
            assert f"def {function}(" in (ROOT / current).read_text(encoding="utf-8"), function
