"""The LocalModel API's names: group, version, kind, the labels on every child, and the
patterns its fields share.

Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

from typing import Final

# --- names ------------------------------------------------------------------------------------

GROUP: Final = "slm.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
KIND: Final = "LocalModel"
PLURAL: Final = "localmodels"
SINGULAR: Final = "localmodel"
SHORT_NAMES: Final = ("lm", "slm")
CATEGORIES: Final = ("ai",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"
FIELD_MANAGER: Final = "slm-operator"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
APP_NAME: Final = "slm-runtime"
MANAGER_NAME: Final = "slm-operator"
COMPONENT_SERVER: Final = "model-server"
COMPONENT_PULLER: Final = "model-puller"
"""Labels on every child; the Deployment selector is LABEL_NAME + LABEL_INSTANCE (immutable)."""

NAME_MAX_LENGTH: Final = 52
"""LocalModel names are DNS-1035 labels of at most this length, so every child name is valid."""
DNS1035_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"

SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
_NUMBER = r"(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
QUANTITY_PATTERN: Final = rf"^(\+|-)?{_NUMBER}(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$"
K8S_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
