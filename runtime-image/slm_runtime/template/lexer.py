"""The lexer: a TEMPLATE's text -> tokens."""

from __future__ import annotations

from dataclasses import dataclass

from slm_runtime.template.values import TemplateError

# ---------------------------------------------------------------------------------------------
# Lexer.

_SPACE = " \t\r\n"
_KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)


@dataclass(frozen=True)
class _Tok:
    kind: str  # text left right space field var dot ident keyword string rawstring char
    #            number bool nil ( ) | := = , eof
    val: str
    pos: int


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return f"line {line}, column {col}"


class _Lexer:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[_Tok] = []

    def err(self, pos: int, msg: str) -> TemplateError:
        return TemplateError(f"template: {_line_col(self.text, pos)}: {msg}")

    def run(self) -> list[_Tok]:
        text, pos, n = self.text, 0, len(self.text)
        trim_next = False
        while pos <= n:
            start = text.find("{{", pos)
            end = n if start < 0 else start
            chunk = text[pos:end]
            if trim_next:
                chunk = chunk.lstrip(_SPACE)
            left_trim = (
                start >= 0
                and text.startswith("-", start + 2)
                and (start + 3 < n and text[start + 3] in _SPACE)
            )
            if left_trim:
                chunk = chunk.rstrip(_SPACE)
            if chunk:
                self.toks.append(_Tok("text", chunk, pos))
            if start < 0:
                break
            pos = start + 2 + (2 if left_trim else 0)
            pos, trim_next = self.action(start, pos)
        self.toks.append(_Tok("eof", "", n))
        return self.toks

    def right_delim(self, pos: int) -> tuple[bool, bool, int]:
        """Whether a closing delimiter starts at pos: (found, trims, position after it)."""
        text = self.text
        if text.startswith("}}", pos):
            return True, False, pos + 2
        if text[pos : pos + 1] in tuple(_SPACE) and text.startswith("-}}", pos + 1):
            return True, True, pos + 4
        return False, False, pos

    def action(self, start: int, pos: int) -> tuple[int, bool]:
        text, n = self.text, len(self.text)
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                raise self.err(start, "unclosed comment")
            found, trims, after = self.right_delim(close + 2)
            if not found:
                raise self.err(start, "comment ends before closing delimiter")
            return after, trims
        self.toks.append(_Tok("left", "{{", start))
        depth = 0
        while True:
            if pos >= n:
                raise self.err(start, "unclosed action")
            found, trims, after = self.right_delim(pos)
            if found:
                if depth:
                    raise self.err(start, "unclosed left paren")
                self.toks.append(_Tok("right", "}}", pos))
                return after, trims
            ch = text[pos]
            if ch in _SPACE:
                end = pos
                while end < n and text[end] in _SPACE and not self.right_delim(end)[0]:
                    end += 1
                self.toks.append(_Tok("space", text[pos:end], pos))
                pos = end
            elif ch == "(":
                depth += 1
                self.toks.append(_Tok("(", ch, pos))
                pos += 1
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    raise self.err(pos, "unexpected right paren")
                self.toks.append(_Tok(")", ch, pos))
                pos += 1
            elif ch == "|":
                self.toks.append(_Tok("|", ch, pos))
                pos += 1
            elif ch == ",":
                self.toks.append(_Tok(",", ch, pos))
                pos += 1
            elif text.startswith(":=", pos):
                self.toks.append(_Tok(":=", ":=", pos))
                pos += 2
            elif ch == "=":
                self.toks.append(_Tok("=", ch, pos))
                pos += 1
            elif ch == '"':
                pos = self.quoted(pos, '"', "string")
            elif ch == "`":
                close = text.find("`", pos + 1)
                if close < 0:
                    raise self.err(pos, "unterminated raw quoted string")
                self.toks.append(_Tok("rawstring", text[pos + 1 : close], pos))
                pos = close + 1
            elif ch == "'":
                pos = self.quoted(pos, "'", "char")
            elif ch == "$":
                end = self.word_end(pos + 1)
                self.toks.append(_Tok("var", text[pos:end], pos))
                pos = end
            elif ch == ".":
                if pos + 1 < n and text[pos + 1].isdigit():
                    pos = self.number(pos)
                    continue
                end = self.word_end(pos + 1)
                kind = "field" if end > pos + 1 else "dot"
                self.toks.append(_Tok(kind, text[pos:end], pos))
                pos = end
            elif ch.isdigit() or (ch in "+-" and pos + 1 < n and text[pos + 1].isdigit()):
                pos = self.number(pos)
            elif ch.isalpha() or ch == "_":
                end = self.word_end(pos)
                word = text[pos:end]
                if word in _KEYWORDS:
                    kind = "keyword"
                elif word in ("true", "false"):
                    kind = "bool"
                elif word == "nil":
                    kind = "nil"
                else:
                    kind = "ident"
                self.toks.append(_Tok(kind, word, pos))
                pos = end
            else:
                raise self.err(pos, f"unexpected {ch!r} in command")

    def word_end(self, pos: int) -> int:
        text, n = self.text, len(self.text)
        while pos < n and (text[pos].isalnum() or text[pos] == "_"):
            pos += 1
        return pos

    def number(self, pos: int) -> int:
        text, n = self.text, len(self.text)
        end = pos + 1
        while end < n and (
            text[end].isalnum()
            or text[end] in "._"
            or (text[end] in "+-" and text[end - 1] in "eEpP")
        ):
            end += 1
        self.toks.append(_Tok("number", text[pos:end], pos))
        return end

    def quoted(self, pos: int, quote: str, kind: str) -> int:
        text, n = self.text, len(self.text)
        end = pos + 1
        while True:
            if end >= n or text[end] == "\n":
                what = "string" if kind == "string" else "character"
                raise self.err(pos, f"unterminated quoted {what}")
            if text[end] == "\\":
                end += 2
                continue
            if text[end] == quote:
                break
            end += 1
        self.toks.append(_Tok(kind, text[pos : end + 1], pos))
        return end + 1


def _unquote(lit: str) -> str:
    """Go's strconv.Unquote for double-quoted strings and character literals."""
    body = lit[1:-1]
    out: list[str] = []
    i = 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in simple:
            out.append(simple[esc])
            i += 2
        elif esc in "\\'\"":
            out.append(esc)
            i += 2
        elif esc in "xuU":
            size = {"x": 2, "u": 4, "U": 8}[esc]
            out.append(chr(int(body[i + 2 : i + 2 + size], 16)))
            i += 2 + size
        elif esc in "01234567":
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise ValueError(f"unknown escape \\{esc}")
    return "".join(out)


def _parse_number(lit: str) -> int | float:
    text = lit.replace("_", "")
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text.lower().startswith(("0x", "-0x", "+0x")):
        return float.fromhex(text)
    return float(text)
