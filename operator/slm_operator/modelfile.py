"""Ollama Modelfile -> LocalModel: parse FROM, PARAMETER, SYSTEM and TEMPLATE into a spec.

Follows Ollama's Modelfile grammar: one instruction per line, instruction names in any case,
``#`` comments, arguments bare, in ``"double quotes"`` or in ``\"\"\"triple quotes\"\"\"`` that
may span lines. Pure: imports neither kopf nor a Kubernetes client.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError
from slm_runtime.config import ModelParameters
from slm_runtime.sources import parse_source

from slm_operator.names import API_VERSION, DNS1035_PATTERN, KIND, NAME_MAX_LENGTH


class ModelfileError(ValueError):
    """A Modelfile that cannot become a LocalModel; the message names the line and the fix."""


PARAMETERS: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "num_ctx": ("contextLength", int),
    "num_predict": ("numPredict", int),
    "temperature": ("temperature", float),
    "top_k": ("topK", int),
    "top_p": ("topP", float),
    "min_p": ("minP", float),
    "repeat_penalty": ("repeatPenalty", float),
    "repeat_last_n": ("repeatLastN", int),
    "presence_penalty": ("presencePenalty", float),
    "frequency_penalty": ("frequencyPenalty", float),
    "seed": ("seed", int),
    "num_thread": ("numThread", int),
    "stop": ("stop", str),
}
"""Ollama PARAMETER name -> (LocalModel spec.parameters field, value type)."""

IGNORED_PARAMETERS: Final = frozenset(
    {
        "mirostat",
        "mirostat_eta",
        "mirostat_tau",
        "tfs_z",
        "typical_p",
        "num_keep",
        "num_gpu",
        "main_gpu",
        "num_batch",
        "use_mmap",
        "use_mlock",
        "numa",
        "low_vram",
        "penalize_newline",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)
"""Ollama parameters the runtime has no equivalent for: dropped with a warning."""

IGNORED_INSTRUCTIONS: Final = {
    "LICENSE": "the license text is not carried into the LocalModel",
    "MESSAGE": "example conversations are not supported; put guidance in SYSTEM instead",
    "REQUIRES": "the Ollama version requirement does not apply to slm-runtime",
}
UNSUPPORTED_INSTRUCTIONS: Final = {
    "ADAPTER": "LoRA adapters are not supported; merge the adapter into the model and point "
    "FROM (or --source-override) at the merged GGUF",
}

_INSTRUCTION = re.compile(r"^([A-Za-z]+)(?:\s+|$)(.*)$", re.DOTALL)
_OLLAMA_NAME = re.compile(
    r"^(?:[a-z0-9.-]+(?::[0-9]+)?/)?(?:[a-z0-9._-]+/)?[a-z0-9._-]+(?::[\w.-]+)?$"
)


@dataclass
class Modelfile:
    """What a Modelfile says, in LocalModel terms."""

    from_value: str = ""
    """FROM's argument, judged only when no source override replaces it."""
    from_where: str = "FROM"
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    warnings: list[str] = field(default_factory=list)


def parse(text: str) -> Modelfile:
    """Parse a Modelfile; raise ModelfileError naming the line for anything that cannot map."""
    result = Modelfile()
    from_line = 0
    for line_no, name, args in _instructions(text):
        where = f"line {line_no}"
        if name == "FROM":
            result.from_value = _unquote(args, where)
            result.from_where = where
            from_line = line_no
        elif name == "PARAMETER":
            _parameter(result, args, where)
        elif name == "SYSTEM":
            result.system = _unquote(args, where)
        elif name == "TEMPLATE":
            result.template = _unquote(args, where)
        elif name in UNSUPPORTED_INSTRUCTIONS:
            raise ModelfileError(f"{where}: {name}: {UNSUPPORTED_INSTRUCTIONS[name]}")
        elif name in IGNORED_INSTRUCTIONS:
            result.warnings.append(f"{where}: {name} ignored: {IGNORED_INSTRUCTIONS[name]}")
        else:
            raise ModelfileError(
                f"{where}: unknown instruction {name!r}; a Modelfile has FROM, PARAMETER, "
                "SYSTEM, TEMPLATE, ADAPTER, LICENSE, MESSAGE and REQUIRES"
            )
    if not from_line:
        raise ModelfileError("the Modelfile has no FROM line; add `FROM <model>`")
    try:
        ModelParameters.model_validate(result.parameters)
    except ValueError as exc:
        raise ModelfileError(f"PARAMETER: {_first_error(exc)}") from exc
    return result


@dataclass(frozen=True)
class HfRepo:
    """``FROM hf.co/ORG/REPO[:QUANT]``: the repo's GGUF file for QUANT, found in its listing."""

    repo_id: str
    quant: str
    value: str
    """The FROM value, for messages."""

    def hint(self) -> str:
        """How to name the file by hand when the listing cannot settle it."""
        return (
            f"pass --source-override hf://{self.repo_id}/<file>.gguf (for example "
            f"hf://{self.repo_id}/{self.repo_id.split('/')[-1].removesuffix('-GGUF')}-"
            f"{self.quant}.gguf) or write FROM hf.co/{self.repo_id}/<file>.gguf"
        )


HF_DEFAULT_QUANT: Final = "Q4_K_M"
"""The quantisation ``FROM hf.co/ORG/REPO`` (or ``:latest``) means, as in Ollama."""
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)


def source_from(value: str, where: str = "FROM") -> str | HfRepo | None:
    """The LocalModel source for a FROM value; an HfRepo to resolve; None for a local path."""
    lowered = value.lower()
    for prefix in ("https://hf.co/", "https://huggingface.co/", "hf.co/", "huggingface.co/"):
        if lowered.startswith(prefix):
            return _hf_source(value[len(prefix) :], value, where)
    if "://" in value:
        parse_source(value, allow_insecure=True)
        return value
    if value.startswith(("/", "./", "../", "~")) or value.lower().endswith(
        (".gguf", ".bin", ".safetensors", ".onnx")
    ):
        if value.startswith("/") and value.lower().endswith(".gguf"):
            return f"file://{value}"
        return None
    # Ollama model names are case-insensitive; tags keep their case.
    head, slash, last = value.rpartition("/")
    model, colon, tag = last.partition(":")
    value = f"{head}{slash}{model}".lower() + colon + tag
    if not _OLLAMA_NAME.fullmatch(value):
        raise ModelfileError(
            f"{where}: FROM {value!r} is neither an Ollama model name (llama3.2:1b), an hf.co/ "
            "URL nor a path to a .gguf file"
        )
    source = f"ollama://{value}"
    try:
        parse_source(source)
    except ValueError as exc:
        raise ModelfileError(f"{where}: FROM {value!r}: {exc}") from exc
    return source


def source_for(model: Modelfile, override: str | None = None) -> str | HfRepo:
    """The source to use: the override when given (FROM is then not judged), else FROM's."""
    if override:
        return override
    source = source_from(model.from_value, model.from_where)
    if source is None:
        raise ModelfileError(
            f"FROM {model.from_value!r} is a file on this machine, which pods cannot read; "
            "upload it somewhere the cluster can pull from and pass --source-override "
            "(hf://ORG/REPO/FILE.gguf, https://..., oci://..., pvc://CLAIM/PATH)"
        )
    return source


def _hf_source(rest: str, value: str, where: str) -> str | HfRepo:
    repo, _, quant = rest.partition(":")
    parts = repo.split("/")
    if len(parts) >= 3 and parts[-1].lower().endswith((".gguf", ".onnx")):
        if len(parts) > 4 and parts[2] in ("resolve", "blob"):
            org, name, _, revision, *path = parts
            source = f"hf://{org}/{name}@{revision}/{'/'.join(path)}"
        else:
            source = f"hf://{repo}"
        parse_source(source)
        return source
    if len(parts) != 2:
        raise ModelfileError(
            f"{where}: FROM {value!r} is not hf.co/ORG/REPO[:QUANT] nor hf.co/ORG/REPO/FILE.gguf"
        )
    try:
        parse_source(f"hf://{repo}/x.gguf")
    except ValueError as exc:
        raise ModelfileError(f"{where}: FROM {value!r}: {exc}") from exc
    if not quant or quant.lower() == "latest":
        quant = HF_DEFAULT_QUANT
    return HfRepo(repo_id=repo, quant=quant, value=value)


def pick_quant_file(repo: HfRepo, files: Mapping[str, str | None]) -> tuple[str, str | None]:
    """The source (and LFS sha256) of the repo's one GGUF file for its quantisation.

    ``files`` is the repo listing: path -> LFS sha256, or None for a file not in LFS.

    A file matches when its name carries the quantisation as a separate word
    (``...-Q4_K_M.gguf``, ``....Q4_K_M.gguf``, any case); projector (``mmproj``) files are
    skipped, and a model split into parts is refused: a LocalModel pulls one file.
    """
    word = re.compile(rf"(?:^|[-._/]){re.escape(repo.quant)}(?:[-.]|$)", re.IGNORECASE)
    ggufs = sorted(
        p
        for p in files
        if p.lower().endswith(".gguf") and not p.rsplit("/", 1)[-1].lower().startswith("mmproj")
    )
    matches = [p for p in ggufs if word.search(p[: -len(".gguf")])]
    if len(matches) == 1 and not _SPLIT_GGUF.search(matches[0]):
        return f"hf://{repo.repo_id}/{matches[0]}", files[matches[0]]
    if matches and all(_SPLIT_GGUF.search(p) for p in matches):
        why = f"is split into {len(matches)} files, and a LocalModel pulls one file"
    elif matches:
        why = f"matches {len(matches)} files ({', '.join(matches)})"
    elif ggufs:
        shown = ", ".join(ggufs[:12]) + (", ..." if len(ggufs) > 12 else "")
        why = f"matches no file; the repo's GGUF files are: {shown}"
    else:
        why = "matches no file: the repo lists no .gguf file"
    raise ModelfileError(f"FROM {repo.value!r}: quantisation {repo.quant} {why}; {repo.hint()}")


def _parameter(result: Modelfile, args: str, where: str) -> None:
    key, _, raw = args.strip().partition(" ")
    key = key.lower()
    raw = raw.strip()
    if not key or not raw:
        raise ModelfileError(f"{where}: PARAMETER needs a name and a value: PARAMETER NAME VALUE")
    if key in IGNORED_PARAMETERS:
        result.warnings.append(f"{where}: PARAMETER {key} ignored: slm-runtime has no equivalent")
        return
    if key not in PARAMETERS:
        raise ModelfileError(
            f"{where}: unknown PARAMETER {key!r}; supported: {', '.join(sorted(PARAMETERS))}"
        )
    field_name, kind = PARAMETERS[key]
    text = _unquote(raw, where)
    try:
        value = kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ModelfileError(f"{where}: PARAMETER {key} {raw!r} is not {what}") from None
    if field_name == "stop":
        result.parameters.setdefault("stop", [])
        if value not in result.parameters["stop"]:
            result.parameters["stop"].append(value)
    else:
        result.parameters[field_name] = value


def _instructions(text: str) -> list[tuple[int, str, str]]:
    """(line number, upper-case instruction, raw arguments), with triple-quoted spans joined."""
    lines = text.splitlines()
    found: list[tuple[int, str, str]] = []
    i = 0
    while i < len(lines):
        line_no, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            raise ModelfileError(
                f"line {line_no}: expected an instruction such as FROM, got {line!r}"
            )
        name, args = match.group(1).upper(), match.group(2)
        if args.count('"""') % 2 == 1:
            parts = [args]
            while i < len(lines) and '"""' not in lines[i]:
                parts.append(lines[i])
                i += 1
            if i == len(lines):
                raise ModelfileError(f'line {line_no}: {name} opens """ but never closes it')
            parts.append(lines[i])
            i += 1
            args = "\n".join(parts)
        found.append((line_no, name, args))
    return found


def _unquote(raw: str, where: str) -> str:
    """The argument without its quotes: \"\"\"...\"\"\" as is, "..." with \\" and \\\\ escapes."""
    text = raw.strip()
    if text.startswith('"""'):
        end = text.find('"""', 3)
        if end < 0 or text[end + 3 :].strip():
            raise ModelfileError(f'{where}: text after the closing """; remove it')
        return text[3:end]
    if text.startswith('"'):
        if len(text) < 2 or not text.endswith('"') or text.endswith('\\"'):
            raise ModelfileError(f"{where}: unterminated quoted string {text!r}")
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def _first_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        item = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in item["loc"])
        return f"{loc}: {item['msg']}"
    return str(exc)


def default_name(model: Modelfile, fallback: str = "model") -> str:
    """A DNS-1035 name from FROM (``llama3.2:1b`` -> ``llama3-2-1b``)."""
    value = model.from_value.rstrip("/").split("/")[-1]
    for suffix in (".gguf", ".onnx", ":latest"):
        value = value.removesuffix(suffix)
    name = re.sub(r"[^a-z0-9]+", "-", value.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[:NAME_MAX_LENGTH].rstrip("-")
    return name if re.fullmatch(DNS1035_PATTERN, name) else fallback


def to_localmodel(
    model: Modelfile,
    name: str,
    source: str,
    namespace: str | None = None,
    sha256: str | None = None,
) -> dict[str, Any]:
    """The LocalModel body: the source (and its pin, when known), parameters, system, template."""
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    spec: dict[str, Any] = {"model": {"source": source}}
    if sha256:
        spec["model"]["sha256"] = sha256
    if source.startswith("http://"):
        spec["model"]["allowInsecure"] = True
        model.warnings.append(
            f"{source} is plain http: allowInsecure set; pin spec.model.sha256 or use https://"
        )
    if model.parameters:
        spec["parameters"] = dict(model.parameters)
    if model.system is not None:
        spec["system"] = model.system
    if model.template is not None:
        spec["template"] = model.template
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}
