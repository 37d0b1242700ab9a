"""Execution: the parse tree and the data -> text, within bounds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from slm_runtime.template.functions import _ARITY, _FUNC_TABLE
from slm_runtime.template.lexer import _line_col
from slm_runtime.template.parser import (
    _Action,
    _Branch,
    _BreakLoopError,
    _Chain,
    _Command,
    _ContinueLoopError,
    _Dot,
    _Field,
    _Function,
    _List,
    _Literal,
    _LoopControl,
    _Node,
    _Pipe,
    _Text,
    _Variable,
)
from slm_runtime.template.values import (
    _TOOL_PROPERTY,
    TemplateError,
    _fmt_v,
    _JSONStringList,
    _JSONStringMap,
    _PropertyType,
    _sorted_keys,
    _Struct,
    _to_typescript_type,
    _truth,
    _type_name,
)

# chat templates over long conversations stay far below both.
MAX_STEPS = 1_000_000
MAX_OUTPUT_CHARS = 16 * 1024 * 1024


class _Exec:
    def __init__(self, text: str, data: dict[str, Any]):
        self.text = text
        self.vars: list[tuple[str, Any]] = [("$", data)]
        self.out: list[str] = []
        self.size = 0
        self.steps = 0

    def err(self, node: _Node, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, node.pos)}: executing: {msg}")

    def write(self, node: _Node, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT_CHARS:
            raise self.err(node, f"output exceeds {MAX_OUTPUT_CHARS} characters")
        self.out.append(text)

    def walk(self, dot: Any, node: _Node) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.err(node, f"rendering takes more than {MAX_STEPS} steps")
        if isinstance(node, _Text):
            self.write(node, node.text)
        elif isinstance(node, _Action):
            val = self.pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.write(node, self.print_value(node, val))
        elif isinstance(node, _List):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, _Branch):
            mark = len(self.vars)
            try:
                if node.kind == "range":
                    self.walk_range(dot, node)
                else:
                    val = self.pipeline(dot, node.pipe)
                    if _truth(val):
                        self.walk(val if node.kind == "with" else dot, node.body)
                    elif node.else_body is not None:
                        self.walk(dot, node.else_body)
            finally:
                del self.vars[mark:]
        elif isinstance(node, _LoopControl):
            raise _BreakLoopError if node.kind == "break" else _ContinueLoopError
        else:  # pragma: no cover - the parser makes no other nodes
            raise self.err(node, f"unknown node {type(node).__name__}")

    def walk_range(self, dot: Any, node: _Branch) -> None:
        pipe = node.pipe
        val = self.pipeline(dot, _Pipe(pipe.pos, [], False, pipe.cmds))
        items: Iterable[tuple[Any, Any]]
        if val is None:
            items = ()
        elif isinstance(val, dict):
            items = [(k, val[k]) for k in _sorted_keys(val)]
        elif isinstance(val, list):
            items = list(enumerate(val))
        elif isinstance(val, int) and not isinstance(val, bool):
            if len(pipe.decl) > 1:
                raise self.err(node, f"can't use {val} to iterate over more than one variable")
            items = ((i, i) for i in range(val))
        else:
            raise self.err(node, f"range can't iterate over {_fmt_v(val)}")
        empty = True
        for key, elem in items:
            empty = False
            mark = len(self.vars)
            if len(pipe.decl) == 1:
                self.set_or_push(pipe, pipe.decl[0], elem)
            elif len(pipe.decl) == 2:
                self.set_or_push(pipe, pipe.decl[0], key)
                self.set_or_push(pipe, pipe.decl[1], elem)
            try:
                self.walk(elem, node.body)
            except _ContinueLoopError:
                pass
            except _BreakLoopError:
                break
            finally:
                del self.vars[mark:]
        if empty and node.else_body is not None:
            self.walk(dot, node.else_body)

    def set_or_push(self, pipe: _Pipe, name: str, value: Any) -> None:
        if pipe.assign:
            self.set_var(pipe, name, value)
        else:
            self.vars.append((name, value))

    def set_var(self, node: _Node, name: str, value: Any) -> None:
        for i in range(len(self.vars) - 1, -1, -1):
            if self.vars[i][0] == name:
                self.vars[i] = (name, value)
                return
        raise self.err(node, f"undefined variable: {name}")

    def var(self, node: _Node, name: str) -> Any:
        for n, v in reversed(self.vars):
            if n == name:
                return v
        raise self.err(node, f"undefined variable: {name}")

    def print_value(self, node: _Node, val: Any) -> str:
        if val is None:
            return "<no value>"
        if isinstance(val, _Struct):
            return _fmt_v(val, depth=1)  # an action prints what a pointer points to
        return _fmt_v(val)

    def pipeline(self, dot: Any, pipe: _Pipe) -> Any:
        val: Any = None
        first = True
        for cmd in pipe.cmds:
            val = self.command(dot, cmd, val, has_final=not first)
            first = False
        if pipe.decl:
            if pipe.assign:
                self.set_var(pipe, pipe.decl[0], val)
            else:
                self.vars.append((pipe.decl[0], val))
        return val

    def command(self, dot: Any, cmd: _Command, final: Any, *, has_final: bool) -> Any:
        first = cmd.args[0]
        if isinstance(first, _Function):
            return self.call(dot, first, cmd.args[1:], final, has_final=has_final)
        if isinstance(first, _Literal) and first.value is None:
            raise self.err(first, "nil is not a command")
        if len(cmd.args) > 1 or has_final:
            if isinstance(first, (_Field, _Variable, _Chain)):
                names = first.names
                raise self.err(
                    first,
                    f"{names[-1] if names else 'value'} has arguments but is not a function",
                )
            raise self.err(first, "can't give argument to non-function")
        return self.arg(dot, first)

    def arg(self, dot: Any, node: _Node) -> Any:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Field):
            return self.fields(node, dot, node.names)
        if isinstance(node, _Variable):
            return self.fields(node, self.var(node, node.names[0]), node.names[1:])
        if isinstance(node, _Chain):
            return self.fields(node, self.arg(dot, node.node), node.names)
        if isinstance(node, _Pipe):
            return self.pipeline(dot, node)
        if isinstance(node, _Function):
            return self.call(dot, node, [], None, has_final=False)
        raise self.err(node, f"can't evaluate {type(node).__name__}")  # pragma: no cover

    def fields(self, node: _Node, val: Any, names: list[str]) -> Any:
        for name in names:
            val = self.field(node, val, name)
        return val

    def field(self, node: _Node, val: Any, name: str) -> Any:
        if isinstance(val, _Struct):
            if name in val.values:
                return val.values[name]
            if name == "ToTypeScriptType" and val.type is _TOOL_PROPERTY:
                return _to_typescript_type(val)
            raise self.err(node, f"can't evaluate field {name} in type {_type_name(val)}")
        if isinstance(val, (_JSONStringMap, _JSONStringList, _PropertyType)) and name == "String":
            return _fmt_v(val)
        if isinstance(val, dict):
            return val.get(name)
        if val is None:
            raise self.err(node, f"nil pointer evaluating interface {{}}.{name}")
        raise self.err(node, f"can't evaluate field {name} in type {_type_name(val)}")

    def call(
        self, dot: Any, fn: _Function, arg_nodes: list[_Node], final: Any, *, has_final: bool
    ) -> Any:
        name = fn.name
        if name in ("and", "or"):
            nodes = list(arg_nodes)
            if not nodes and not has_final:
                raise self.err(fn, f"wrong number of args for {name}: want at least 1 got 0")
            val: Any = None
            count = len(nodes) + (1 if has_final else 0)
            for i in range(count):
                val = self.arg(dot, nodes[i]) if i < len(nodes) else final
                if _truth(val) == (name == "or"):
                    return val
            return val
        args = [self.arg(dot, a) for a in arg_nodes]
        if has_final:
            args.append(final)
        func = _FUNC_TABLE[name]
        least, most = _ARITY[name]
        if not least <= len(args) <= most:
            raise self.err(fn, f"wrong number of args for {name}: got {len(args)}")
        try:
            return func(*args)
        except TemplateError as e:
            raise self.err(fn, f"error calling {name}: {e}") from None
