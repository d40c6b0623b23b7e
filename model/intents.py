"""Intent sets users define: a YAML file of named intents, each with a description and examples.

The format (see configs/intents/README.md)::

    reject_below: 0.35               # optional: this set's out-of-scope threshold, in [0, 1]
    intents:
      - name: Check in               # published as `intent`
        description: The guest has arrived and wants to check in to the room they booked.
        examples:                    # optional, any number
          - I'd like to check in please.

`load_intent_set` checks the file on the node tree YAML composes, so every error names the file,
the line and the key: ``kiosk.yaml:7: intents[1].description: is empty (expected a non-empty
string, got '')``. Text values are taken as written and their whitespace is collapsed:
``name: Yes`` is the text "Yes", not a boolean.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from model.errors import DataError
from model.paths import config_file
from model.yamlcheck import NULL_TAG, STR_TAG, NodeChecker, compose_file, describe, line_of

MIN_INTENTS = 2
TOP_KEYS = ("intents", "reject_below")
INTENT_KEYS = ("name", "description", "examples")

# Names are published and become MQTT topic levels (Hermes `hermes/intent/<Name>`): no topic
# separators or wildcards, and none of the names that mean "no intent" in eval files and events.
TOPIC_CHARACTERS = "/#+"
RESERVED_NAMES = ("oos", "out of scope", "out_of_scope")

_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_FORMAT_HINT = "a mapping with the key 'intents' (and optionally 'reject_below')"


@dataclass(frozen=True)
class Intent:
    """One intent: `name` is what gets published; `description` and `examples` say what it means."""

    name: str
    description: str
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class IntentSet:
    """The intents of one file, in file order. `reject_below` overrides the out-of-scope threshold."""

    intents: tuple[Intent, ...]
    source: str
    reject_below: float | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(intent.name for intent in self.intents)

    def texts(self) -> tuple[list[str], list[int]]:
        """Every description and example, each intent's description first, and the index of the
        intent each belongs to."""
        texts, owner = [], []
        for k, intent in enumerate(self.intents):
            for text in (intent.description, *intent.examples):
                texts.append(text)
                owner.append(k)
        return texts, owner

    def digest(self) -> str:
        """What the set says: names, descriptions and examples (not the file's comments or layout)."""
        content = [[i.name, i.description, list(i.examples)] for i in self.intents]
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.intents)


def topic_name(intent: str) -> str:
    """An intent's name as one MQTT topic level: "Check in" -> "CheckIn" (Hermes' convention). Each
    word's first letter only is raised: "Turn on TV" -> "TurnOnTV", "thank-you note" -> "Thank-youNote"
    (str.title would give "Tv" and "Thank-YouNote")."""
    return "".join(word[:1].upper() + word[1:] for word in intent.split())


def load_intent_set(path: Path | str) -> IntentSet:
    """Read and check an intent set file; raise `DataError` naming file, line and key on any problem."""
    path = Path(path)
    return _Checker(path).intent_set(compose_file(path, "intent set", "intents"))


class _Checker(NodeChecker):
    def intent_set(self, root: Node | None) -> IntentSet:
        if root is None:
            raise DataError("file is empty", path=self.path, line=1, expected=_FORMAT_HINT, got="nothing")
        if not isinstance(root, MappingNode):
            raise self.fail(root, "top level", "not a mapping", _FORMAT_HINT, describe(root))
        top = self.mapping(root, "", TOP_KEYS)
        if "intents" not in top:
            raise self.fail(root, "intents", "missing key", _FORMAT_HINT, f"keys {', '.join(top) or 'none'}")
        reject_below = self.reject_below(*top["reject_below"]) if "reject_below" in top else None
        key_node, list_node = top["intents"]
        if not isinstance(list_node, SequenceNode):
            got = describe(list_node)
            raise self.fail(key_node, "intents", "not a list", f"a list of at least {MIN_INTENTS} intents", got)
        if len(list_node.value) < MIN_INTENTS:
            raise self.fail(
                key_node, "intents", "too few intents", f"at least {MIN_INTENTS} intents", str(len(list_node.value))
            )
        intents: list[Intent] = []
        seen_names: dict[str, tuple[str, int]] = {}  # folded name -> (name, line)
        seen_examples: dict[str, tuple[str, int]] = {}  # folded example -> (intent name, line)
        seen_descriptions: dict[str, tuple[str, int]] = {}  # folded description -> (intent name, line)
        for index, item in enumerate(list_node.value):
            intent = self.intent(item, f"intents[{index}]", seen_names, seen_examples, seen_descriptions)
            intents.append(intent)
        return IntentSet(intents=tuple(intents), source=str(self.path), reject_below=reject_below)

    def intent(
        self,
        item: Node,
        key: str,
        seen_names: dict[str, tuple[str, int]],
        seen_examples: dict[str, tuple[str, int]],
        seen_descriptions: dict[str, tuple[str, int]],
    ) -> Intent:
        if not isinstance(item, MappingNode):
            expected = "a mapping with name, description and optional examples"
            raise self.fail(item, key, "each intent is a mapping", expected, describe(item))
        fields = self.mapping(item, key, INTENT_KEYS)
        for required in ("name", "description"):
            if required not in fields:
                got = f"keys {', '.join(fields) or 'none'}"
                expected = "keys name and description (examples optional)"
                raise self.fail(item, f"{key}.{required}", "missing key", expected, got)
        name_node = fields["name"][1]
        name = self.text(name_node, f"{key}.name", "name")
        if any(c in name for c in TOPIC_CHARACTERS):
            expected = f"a name without {', '.join(repr(c) for c in TOPIC_CHARACTERS)} (it becomes an MQTT topic level)"
            raise self.fail(name_node, f"{key}.name", "bad name", expected, repr(name))
        if name.casefold() in RESERVED_NAMES:
            expected = "a name other than OOS or 'out of scope' (they mark off-topic speech)"
            raise self.fail(name_node, f"{key}.name", "reserved name", expected, repr(name))
        folded = topic_name(name).casefold()
        if folded in seen_names:
            first, first_line = seen_names[folded]
            raise self.fail(
                name_node,
                f"{key}.name",
                f"duplicate name, already on line {first_line} as {first!r}",
                "names that differ ignoring case and spaces (each is published as its own topic)",
                repr(name),
            )
        seen_names[folded] = (name, line_of(name_node))
        description_node = fields["description"][1]
        description = self.text(description_node, f"{key}.description", "description")
        if description.casefold() in seen_descriptions:
            owner, first_line = seen_descriptions[description.casefold()]
            raise self.fail(
                description_node,
                f"{key}.description",
                f"description already given on line {first_line}, under {owner!r}",
                "a description of its own for each intent (the intents could not be told apart)",
                repr(description),
            )
        seen_descriptions[description.casefold()] = (name, line_of(description_node))
        examples = (
            self.examples(*fields["examples"], f"{key}.examples", name, seen_examples) if "examples" in fields else ()
        )
        return Intent(name=name, description=description, examples=examples)

    def examples(
        self, key_node: Node, node: Node, key: str, intent: str, seen: dict[str, tuple[str, int]]
    ) -> tuple[str, ...]:
        if isinstance(node, ScalarNode) and node.tag == NULL_TAG:
            return ()
        if not isinstance(node, SequenceNode):
            expected = "a list of sentences, each on its own line starting with '- '"
            raise self.fail(key_node, key, "not a list", expected, describe(node))
        examples = []
        for index, item in enumerate(node.value):
            example = self.text(item, f"{key}[{index}]", "example")
            folded = example.casefold()
            if folded in seen:
                owner, first_line = seen[folded]
                raise self.fail(
                    item,
                    f"{key}[{index}]",
                    f"example already given on line {first_line}, under {owner!r}",
                    "each example once, under one intent",
                    repr(example),
                )
            seen[folded] = (intent, line_of(item))
            examples.append(example)
        return tuple(examples)

    def reject_below(self, key_node: Node, node: Node) -> float:
        expected = "a number from 0 to 1"
        value: float | None = None
        if isinstance(node, ScalarNode):
            if node.tag in _NUMBER_TAGS:
                value = float(SafeConstructor().construct_object(node))
            elif node.tag == STR_TAG and node.style is None:  # 1e-1 is text to YAML 1.1
                try:
                    value = float(node.value)
                except ValueError:
                    value = None
        if value is None or not 0.0 <= value <= 1.0:
            raise self.fail(key_node, "reject_below", "bad out-of-scope threshold", expected, describe(node))
        return value


def dataset_intent_set(dataset: str) -> IntentSet:
    """The intent set a dataset trains with when `dfmq train` is given none: MIntRec's written
    descriptions (configs/intents/mintrec.yaml); for MELD-DA, whose dialogue acts have no written
    descriptions, a sentence made from each label's name."""
    from model.config import MELD_DA_LABELS

    if dataset == "mintrec":
        return load_intent_set(config_file("intents", "mintrec.yaml"))
    if dataset == "meld-da":
        acts = MELD_DA_LABELS.values()
        intents = tuple(Intent(label, f"The speaker's dialogue act is: {label.lower()}.") for label in acts)
        return IntentSet(intents, source="meld-da labels")
    if dataset == "intents":
        raise DataError("the intents layout trains on an intent set", expected="--intents FILE", got="none")
    raise DataError("unknown dataset", expected="'mintrec', 'meld-da' or 'intents'", got=repr(dataset))


def dump_intent_set(intent_set: IntentSet) -> str:
    """The set as YAML in the format `load_intent_set` reads (a checkpoint keeps its trained set so)."""
    data: dict[str, object] = {}
    if intent_set.reject_below is not None:
        data["reject_below"] = intent_set.reject_below
    data["intents"] = [
        {"name": i.name, "description": i.description, **({"examples": list(i.examples)} if i.examples else {})}
        for i in intent_set.intents
    ]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
