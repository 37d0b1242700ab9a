"""LocalModel v1alpha1: the user-facing API as pydantic models; the CRD is generated from them.

Every field carries a description (it becomes the CRD's documentation), a default and bounds.
Cross-field rules are written twice on purpose: as CEL (``x-kubernetes-validations``) so the API
server rejects them at the edge, and as pydantic validators so the operator gives the same answer
with a message that names the field. Pure: imports neither kopf nor a Kubernetes client.

The models live by part: ``names`` (group, kind, labels, patterns), ``fields`` (reusable field
types and CEL rules), ``spec`` and ``conditions`` (status); this module holds the whole object
and its parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from slm_operator.conditions import LocalModelStatus
from slm_operator.fields import cel
from slm_operator.names import DNS1035_PATTERN, KIND, NAME_MAX_LENGTH
from slm_operator.spec import LocalModelSpec
from slm_operator.variants import ModelVariant, merged_parameters, served

# --- the whole object -------------------------------------------------------------------------


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str = Field(pattern=DNS1035_PATTERN, max_length=NAME_MAX_LENGTH)
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class LocalModel(BaseModel):
    """A LocalModel as read from the API server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: Literal["slm.dev/v1alpha1"] = Field(default="slm.dev/v1alpha1", alias="apiVersion")
    kind: Literal["LocalModel"] = KIND
    metadata: ObjectMeta
    spec: LocalModelSpec
    status: LocalModelStatus = Field(default_factory=LocalModelStatus)

    def serving(self, variant: ModelVariant | None) -> LocalModel:
        """This model as the pods of ``variant`` run it: the variant's source as
        ``spec.model``, its parameters over ``spec.parameters`` (the render, the pull and the
        status read these). Unchanged for the single-source form."""
        if variant is None or not self.spec.model.variants:
            return self
        spec = self.spec.model_copy(
            update={
                "model": served(self.spec.model, variant),
                "parameters": merged_parameters(self.spec.parameters, variant),
            }
        )
        return self.model_copy(update={"spec": spec})


NAME_RULE: Final = cel(
    f"self.metadata.name.size() <= {NAME_MAX_LENGTH} && "
    f"self.metadata.name.matches('{DNS1035_PATTERN}')",
    f"metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with "
    f"a letter) of at most {NAME_MAX_LENGTH} characters",
)
"""The CEL rule on the object root that keeps every child name valid."""


class InvalidSpecError(ValueError):
    """A LocalModel the operator cannot serve; the message names the field and what to change."""


def format_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem: ``spec.model.sha256: String should match pattern ...``."""
    lines = []
    for item in error.errors(include_url=False):
        loc = ".".join(str(part) for part in item["loc"] if part != "__root__")
        path = ".".join(p for p in (prefix, loc) if p)
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def parse_localmodel(body: Mapping[str, Any]) -> LocalModel:
    """Validate a LocalModel body; raise InvalidSpecError with field-naming messages."""
    try:
        model = LocalModel.model_validate(dict(body))
    except ValidationError as exc:
        raise InvalidSpecError(format_validation_error(exc)) from exc
    spec = model.spec.model
    try:
        if spec.source is not None:
            spec.resolved_format()
    except ValueError as exc:
        raise InvalidSpecError(f"spec.model.format: {exc}") from exc
    return model
