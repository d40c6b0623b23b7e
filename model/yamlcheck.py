"""Checking YAML the user wrote on the node tree YAML composes, so that every error names the
file, the line and the key (intent sets, stream lists)."""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from model.errors import DataError

NULL_TAG = "tag:yaml.org,2002:null"
STR_TAG = "tag:yaml.org,2002:str"
YAML_HINT = "valid YAML: check indentation, quotes and brackets"


def compose_file(path: Path, what: str, holds: str) -> Node | None:
    """The node tree of a user's YAML file; `what` names the file in errors ("intent set"),
    `holds` what it should hold ("intents")."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{what} file is missing", path=path, expected=f"a YAML file of {holds}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what}: {exc}", path=path, expected="a UTF-8 YAML file") from None
    return compose_yaml(path, text)


def compose_yaml(path: Path, text: str) -> Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = ": ".join(part for part in (exc.context, exc.problem) if part)
        if exc.context_mark is not None and line is not None and exc.context_mark.line + 1 != line:
            problem += f" (started on line {exc.context_mark.line + 1})"
        raise DataError(f"not valid YAML: {problem}", path=path, line=line, expected=YAML_HINT) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = f"U+{exc.character:04X}" if isinstance(exc.character, int) else repr(exc.character)
        raise DataError(
            f"not valid YAML: {exc.reason}", path=path, line=line, expected="printable text", got=char
        ) from None
    except yaml.YAMLError as exc:
        raise DataError(f"not valid YAML: {exc}", path=path, expected=YAML_HINT) from None


def line_of(node: Node) -> int:
    return node.start_mark.line + 1


def describe(node: Node) -> str:
    """What a node holds, in words, for the `got` of an error."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return f"a list of {len(node.value)}"
    if node.tag == NULL_TAG:
        return "nothing"
    text = str(node.value)
    shown = repr(text if len(text) <= 60 else text[:57] + "...")
    if node.tag == STR_TAG:
        return shown
    return f"{node.tag.rsplit(':', 1)[-1]} {shown}"


class NodeChecker:
    """Errors that name the file, the line and the key; mappings and text values checked."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(
        self, node: Node, key: str, problem: str, expected: str | None = None, got: str | None = None
    ) -> DataError:
        return DataError(f"{key}: {problem}", path=self.path, line=line_of(node), expected=expected, got=got)

    def mapping(self, node: MappingNode, key: str, allowed: tuple[str, ...]) -> dict[str, tuple[Node, Node]]:
        """The (key node, value node) pairs of a mapping, rejecting unknown, repeated and non-text keys."""
        found: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise self.fail(
                    key_node,
                    key or "top level",
                    "a key must be a word",
                    f"one of {', '.join(allowed)}",
                    describe(key_node),
                )
            name = str(key_node.value)
            where = f"{key}.{name}" if key else name
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise self.fail(key_node, where, f"unknown key{hint}", f"only {', '.join(allowed)}", repr(name))
            if name in found:
                first = line_of(found[name][0])
                raise self.fail(
                    key_node, where, f"key given twice (first on line {first})", "each key once", repr(name)
                )
            found[name] = (key_node, value_node)
        return found

    def text(self, node: Node, key: str, what: str) -> str:
        """A non-empty scalar, as written, whitespace collapsed."""
        if not isinstance(node, ScalarNode):
            raise self.fail(node, key, f"{what} must be text", "a non-empty string", describe(node))
        value = "" if node.tag == NULL_TAG else " ".join(str(node.value).split())
        if not value:
            raise self.fail(node, key, f"{what} is empty", "a non-empty string", repr(value))
        return value
