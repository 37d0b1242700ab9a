"""The parser: tokens -> the parse tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slm_runtime.template.functions import _FUNC_TABLE
from slm_runtime.template.lexer import _Lexer, _line_col, _parse_number, _Tok, _unquote
from slm_runtime.template.values import TemplateError, _fmt_v

# ---------------------------------------------------------------------------------------------
# Parse tree.


class _LoopControlError(Exception):
    """Unwinds a {{break}} or {{continue}} to its {{range}}."""


class _BreakLoopError(_LoopControlError):
    pass


class _ContinueLoopError(_LoopControlError):
    pass


@dataclass
class _Node:
    pos: int


@dataclass
class _Text(_Node):
    text: str


@dataclass
class _Field(_Node):
    names: list[str]


@dataclass
class _Variable(_Node):
    names: list[str]  # first is "$" or "$name"


@dataclass
class _Dot(_Node):
    pass


@dataclass
class _Literal(_Node):
    value: Any


@dataclass
class _Function(_Node):
    name: str


@dataclass
class _Chain(_Node):
    node: _Node
    names: list[str]


@dataclass
class _Command(_Node):
    args: list[_Node]


@dataclass
class _Pipe(_Node):
    decl: list[str]
    assign: bool
    cmds: list[_Command]


@dataclass
class _Action(_Node):
    pipe: _Pipe


@dataclass
class _List(_Node):
    nodes: list[_Node] = field(default_factory=list)


@dataclass
class _Branch(_Node):
    kind: str  # if, with, range
    pipe: _Pipe
    body: _List
    else_body: _List | None


@dataclass
class _LoopControl(_Node):
    kind: str  # break, continue


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _Lexer(text).run()
        self.i = 0
        self.vars: list[str] = ["$"]
        self.range_depth = 0

    def err(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, pos)}: {msg}")

    def peek(self, skip_space: bool = True) -> _Tok:
        j = self.i
        while skip_space and self.toks[j].kind == "space":
            j += 1
        return self.toks[j]

    def next(self, skip_space: bool = True) -> _Tok:
        while skip_space and self.toks[self.i].kind == "space":
            self.i += 1
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def expect(self, kind: str, context: str) -> _Tok:
        tok = self.next()
        if tok.kind != kind:
            raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")
        return tok

    @staticmethod
    def describe(tok: _Tok) -> str:
        if tok.kind == "eof":
            return "EOF"
        if tok.kind == "right":
            return '"}}"'
        return f"{tok.val!r}"

    def parse(self) -> _List:
        root, _ = self.item_list(top=True)
        return root

    def item_list(self, top: bool = False) -> tuple[_List, _Tok]:
        """Items up to EOF (top) or up to an {{end}} / {{else}}; returns that last token."""
        lst = _List(self.toks[self.i].pos)
        while True:
            tok = self.next(skip_space=False)
            if tok.kind == "eof":
                if top:
                    return lst, tok
                raise self.err(tok.pos, "unexpected EOF: missing {{end}}")
            if tok.kind == "text":
                lst.nodes.append(_Text(tok.pos, tok.val))
                continue
            # tok is "left"
            kw = self.peek()
            if kw.kind == "keyword" and kw.val in ("end", "else"):
                self.next()
                if top:
                    raise self.err(kw.pos, f"unexpected {{{{{kw.val}}}}}")
                return lst, kw
            lst.nodes.append(self.action(tok))

    def action(self, left: _Tok) -> _Node:
        kw = self.peek()
        if kw.kind == "keyword":
            self.next()
            if kw.val in ("if", "with", "range"):
                return self.control(kw)
            if kw.val in ("break", "continue"):
                if self.range_depth == 0:
                    raise self.err(kw.pos, f"{{{{{kw.val}}}}} outside {{{{range}}}}")
                self.expect("right", kw.val)
                return _LoopControl(kw.pos, kw.val)
            raise self.err(
                kw.pos,
                f"{{{{{kw.val}}}}} is not supported: Ollama templates cannot define or "
                "include named templates",
            )
        return _Action(left.pos, self.pipeline("command", "right"))

    def control(self, kw: _Tok) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(kw.val, "right")
        if not pipe.cmds:
            raise self.err(kw.pos, f"missing value for {kw.val}")
        if kw.val == "range":
            self.range_depth += 1
        body, end = self.item_list()
        if kw.val == "range":
            self.range_depth -= 1
        else_body: _List | None = None
        if end.val == "else":
            nxt = self.peek()
            if kw.val != "range" and nxt.kind == "keyword" and nxt.val == kw.val:
                # {{else if ...}} / {{else with ...}}: a nested branch that shares the {{end}}.
                self.next()
                else_body = _List(nxt.pos, [self.control(nxt)])
            else:
                self.expect("right", "else")
                else_body, end2 = self.item_list()
                if end2.val != "end":
                    raise self.err(end2.pos, f"expected end; found {{{{{end2.val}}}}}")
                self.expect("right", "end")
        else:
            self.expect("right", "end")
        del self.vars[mark:]
        return _Branch(kw.pos, kw.val, pipe, body, else_body)

    def pipeline(self, context: str, end: str) -> _Pipe:
        start = self.peek()
        decl: list[str] = []
        assign = False
        # Declarations: "$x :=", "$x =", and for range "$i, $x :=".
        if start.kind == "var":
            save = self.i
            names = [self.next().val]
            after = self.peek()
            if after.kind == "," and context == "range":
                self.next()
                second = self.next()
                if second.kind != "var":
                    raise self.err(
                        second.pos,
                        f"range can only initialize variables, not {self.describe(second)}",
                    )
                names.append(second.val)
                after = self.peek()
                if after.kind not in (":=", "="):
                    raise self.err(after.pos, "range variables must be followed by := or =")
            if after.kind in (":=", "="):
                self.next()
                assign = after.kind == "="
                for name in names:
                    if assign:
                        if name not in self.vars:
                            raise self.err(start.pos, f'undefined variable "{name}"')
                    else:
                        self.vars.append(name)
                decl = names
            else:
                self.i = save
        cmds: list[_Command] = []
        while True:
            tok = self.peek()
            if tok.kind == end:
                self.next()
                break
            if tok.kind in ("eof", "right", ")"):
                raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")
            cmds.append(self.command(context, end))
            sep = self.peek()
            if sep.kind == "|":
                self.next()
                if self.peek().kind in (end, "|"):
                    raise self.err(sep.pos, "missing command after '|'")
        if not cmds:
            raise self.err(start.pos, f"missing value for {context}")
        for cmd in cmds[1:]:
            first = cmd.args[0]
            if isinstance(first, (_Literal, _Dot)):
                raise self.err(first.pos, "non executable command in pipeline stage 2")
        return _Pipe(start.pos, decl, assign, cmds)

    def command(self, context: str, end: str) -> _Command:
        args: list[_Node] = []
        pos = self.peek().pos
        while True:
            tok = self.peek()
            if tok.kind in (end, "|", "eof", "right", ")"):
                break
            if args and self.toks[self.i].kind != "space":
                raise self.err(tok.pos, f"missing space before {self.describe(tok)}")
            args.append(self.operand(context))
        if not args:
            raise self.err(pos, "empty command")
        first = args[0]
        if len(args) > 1 and isinstance(first, (_Literal, _Dot)):
            raise self.err(first.pos, f"can't give argument to non-function {self.source(first)}")
        return _Command(pos, args)

    def source(self, node: _Node) -> str:
        if isinstance(node, _Dot):
            return "."
        if isinstance(node, _Literal):
            return _fmt_v(node.value) if node.value is not None else "nil"
        return type(node).__name__

    def operand(self, context: str) -> _Node:
        node = self.term(context)
        names: list[str] = []
        while self.toks[self.i].kind == "field":
            names.extend(self.toks[self.i].val[1:].split("."))
            self.i += 1
        if not names:
            return node
        if isinstance(node, _Field):
            return _Field(node.pos, node.names + names)
        if isinstance(node, _Variable):
            return _Variable(node.pos, node.names + names)
        if isinstance(node, (_Literal, _Dot)):
            raise self.err(node.pos, f"unexpected . after term {self.source(node)!r}")
        return _Chain(node.pos, node, names)

    def term(self, context: str) -> _Node:
        tok = self.next()
        kind = tok.kind
        if kind == "ident":
            if tok.val not in _FUNC_TABLE:
                raise self.err(tok.pos, f'function "{tok.val}" not defined')
            return _Function(tok.pos, tok.val)
        if kind == "dot":
            return _Dot(tok.pos)
        if kind == "nil":
            return _Literal(tok.pos, None)
        if kind == "var":
            if tok.val not in self.vars:
                raise self.err(tok.pos, f'undefined variable "{tok.val}"')
            return _Variable(tok.pos, [tok.val])
        if kind == "field":
            return _Field(tok.pos, tok.val[1:].split("."))
        if kind == "bool":
            return _Literal(tok.pos, tok.val == "true")
        if kind == "number":
            try:
                return _Literal(tok.pos, _parse_number(tok.val))
            except ValueError:
                raise self.err(tok.pos, f"bad number syntax: {tok.val!r}") from None
        if kind == "string":
            try:
                return _Literal(tok.pos, _unquote(tok.val))
            except (ValueError, IndexError) as e:
                raise self.err(tok.pos, f"bad string {tok.val}: {e}") from None
        if kind == "rawstring":
            return _Literal(tok.pos, tok.val)
        if kind == "char":
            try:
                text = _unquote(tok.val)
            except (ValueError, IndexError):
                text = ""
            if len(text) != 1:
                raise self.err(tok.pos, f"malformed character constant: {tok.val}")
            return _Literal(tok.pos, ord(text))
        if kind == "(":
            return self.pipeline("parenthesized pipeline", ")")
        raise self.err(tok.pos, f"unexpected {self.describe(tok)} in {context}")
