"""Ollama's data model and execution rules (template/template.go)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from slm_runtime.template.parser import (
    _Action,
    _Branch,
    _Command,
    _Field,
    _List,
    _Node,
    _Pipe,
    _Variable,
)
from slm_runtime.template.values import (
    _MESSAGE,
    _TOOL,
    _TOOL_CALL,
    _TOOL_CALL_FUNCTION,
    _TOOL_FUNCTION,
    _TOOL_PARAMETERS,
    _TOOL_PROPERTY,
    TemplateError,
    _JSONStringList,
    _JSONStringMap,
    _NilJSONStringList,
    _NilJSONStringMap,
    _NilList,
    _OrderedMap,
    _PropertyType,
    _Struct,
)

# ---------------------------------------------------------------------------------------------
# Ollama's data model and execution rules (template/template.go).


def _identifiers(node: _Node) -> Iterator[str]:
    """The field and variable names a template mentions, as Ollama's Vars() collects them."""
    if isinstance(node, _List):
        for child in node.nodes:
            yield from _identifiers(child)
    elif isinstance(node, _Action):
        yield from _identifiers(node.pipe)
    elif isinstance(node, _Branch):
        yield from _identifiers(node.pipe)
        yield from _identifiers(node.body)
        if node.else_body is not None:
            yield from _identifiers(node.else_body)
    elif isinstance(node, _Pipe):
        for cmd in node.cmds:
            for arg in cmd.args:
                yield from _identifiers(arg)
    elif isinstance(node, (_Field, _Variable)):
        yield from node.names


def _cut_after_response(root: _List) -> _List:
    """A copy of the tree with everything after the first {{ .Response }} removed.

    This is how Ollama renders the last turn of a legacy (.Prompt/.Response) template: the
    text up to the response slot is the prompt the model continues.
    """
    cut = False

    def walk_list(lst: _List) -> _List | None:
        if cut:
            return None
        return _List(lst.pos, [n for n in (walk(c) for c in lst.nodes) if n is not None])

    def walk_pipe(pipe: _Pipe) -> _Pipe | None:
        if cut:
            return None
        cmds = []
        for cmd in pipe.cmds:
            args = [n for n in (walk(a) for a in cmd.args) if n is not None]
            if not args:
                return None
            cmds.append(_Command(cmd.pos, args))
        return _Pipe(pipe.pos, pipe.decl, pipe.assign, cmds)

    def walk(node: _Node) -> _Node | None:
        nonlocal cut
        if isinstance(node, _Field) and "Response" in node.names:
            cut = True
            return node
        if cut:
            return None
        if isinstance(node, _Branch):
            body = walk_list(node.body) or _List(node.pos)
            else_body = walk_list(node.else_body) if node.else_body is not None else None
            return _Branch(node.pos, node.kind, node.pipe, body, else_body)
        if isinstance(node, _Action):
            pipe = walk_pipe(node.pipe)
            return None if pipe is None else _Action(node.pos, pipe)
        return node

    return walk_list(root) or _List(root.pos)


def _go_number(v: Any) -> Any:
    """A JSON value as Go decodes it into `any`: numbers become float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): _go_number(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_go_number(x) for x in v]
    return v


def _tool_property(p: Any) -> _Struct:
    if not isinstance(p, dict):
        p = {}
    raw_type = p.get("type")
    if isinstance(raw_type, str):
        types = _PropertyType([raw_type])
    elif isinstance(raw_type, list):
        types = _PropertyType(str(t) for t in raw_type)
    else:
        types = _PropertyType()
    nested = p.get("properties")
    return _Struct(
        _TOOL_PROPERTY,
        {
            "AnyOf": [_tool_property(x) for x in p.get("anyOf") or []],
            "Type": types,
            "Items": _go_number(p.get("items")),
            "Description": str(p.get("description") or ""),
            "Enum": _go_number(list(p.get("enum") or [])),
            "Properties": _OrderedMap({k: _tool_property(v) for k, v in nested.items()})
            if isinstance(nested, dict)
            else None,
        },
    )


def _tools_value(tools: list[dict[str, Any]] | None) -> _JSONStringList:
    if tools is None:
        return _NilJSONStringList()
    out = _JSONStringList()
    for tool in tools:
        fn = tool.get("function") or {}
        params = fn.get("parameters") or {}
        props = params.get("properties")
        out.append(
            _Struct(
                _TOOL,
                {
                    "Type": str(tool.get("type") or ""),
                    "Items": _go_number(tool.get("items")),
                    "Function": _Struct(
                        _TOOL_FUNCTION,
                        {
                            "Name": str(fn.get("name") or ""),
                            "Description": str(fn.get("description") or ""),
                            "Parameters": _Struct(
                                _TOOL_PARAMETERS,
                                {
                                    "Type": str(params.get("type") or ""),
                                    "Defs": _go_number(params.get("$defs")),
                                    "Items": _go_number(params.get("items")),
                                    "Required": [str(r) for r in params.get("required") or []],
                                    "Properties": _JSONStringMap(
                                        {k: _tool_property(v) for k, v in props.items()}
                                    )
                                    if isinstance(props, dict)
                                    else _NilJSONStringMap(),
                                },
                            ),
                        },
                    ),
                },
            )
        )
    return out


def _tool_call_value(call: dict[str, Any]) -> _Struct:
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):  # OpenAI sends the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise TemplateError(f"tool call arguments are not valid JSON: {e}") from None
    if args is not None and not isinstance(args, dict):
        raise TemplateError("tool call arguments must be a JSON object")
    index = fn.get("index", 0)
    return _Struct(
        _TOOL_CALL,
        {
            "ID": str(call.get("id") or ""),
            "Function": _Struct(
                _TOOL_CALL_FUNCTION,
                {
                    "Index": int(index) if isinstance(index, int) else 0,
                    "Name": str(fn.get("name") or ""),
                    "Arguments": _JSONStringMap(_go_number(args or {})),
                },
            ),
        },
    )


def _message_value(m: dict[str, Any]) -> _Struct:
    return _Struct(
        _MESSAGE,
        {
            "Role": m["role"],
            "Content": m["content"],
            "Thinking": str(m.get("thinking") or ""),
            "Images": list(m.get("images") or []) or _NilList(),
            "ToolCalls": [_tool_call_value(c) for c in m.get("tool_calls") or []] or _NilList(),
            "ToolName": str(m.get("tool_name") or ""),
            "ToolCallID": str(m.get("tool_call_id") or ""),
        },
        pointer=True,
    )


def _collate(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Merge consecutive messages of one role (except tool results); gather the system text."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "system":
            system.append(m["content"])
        if out and out[-1]["role"] == m["role"] and m["role"] != "tool":
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
        else:
            out.append(m)
    return "\n\n".join(system), out


def _normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TemplateError(f"messages[{i}] must be an object with role and content")
        role = m.get("role")
        if not isinstance(role, str) or not role:
            raise TemplateError(f"messages[{i}].role must be a non-empty string")
        content = m.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}].content must be a string")
        out.append({**m, "role": role.lower(), "content": content})
    return out
