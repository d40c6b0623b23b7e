"""Several streams in one `dfmq run`: the `--streams FILE.yaml` list.

    streams:
      - id: lobby
        input: /data/lobby.mp4        # as --input; or audio: / video: as on the command line
      - id: desk
        audio: default
        video: 0

Each stream gets its own sources, VAD, running quality references, topics (dfmq/<id>/...), status
and last will; the Whisper model, the intent model, its engine and the micro-batcher are shared
(stream/run.py). Paths are read as on the command line (relative to the working directory).
Errors name the file, the line and the key, as intent sets do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from model.errors import DataError, DfmqError
from model.yamlcheck import NULL_TAG, NodeChecker, compose_file, describe
from stream.options import STREAM_ID

STREAM_KEYS = ("id", "input", "audio", "video")
_FORMAT_HINT = "a mapping with the key 'streams': a list of {id, input} or {id, audio, video}"


@dataclass(frozen=True)
class StreamSpec:
    """One stream of a multi-stream run: its id and its sources, as `dfmq run` takes them."""

    id: str
    input: str | None = None
    audio: str | None = None
    video: str | None = None
    # Where a streams file gave it, for errors found only when its sources open (a missing file).
    file: Path | None = field(default=None, compare=False)
    line: int | None = field(default=None, compare=False)
    key: str | None = field(default=None, compare=False)

    def located(self, source: str, problem: DfmqError) -> DataError:
        """`problem` with the streams file's name, line and key for this stream."""
        name = next((n for n in ("input", "audio", "video") if getattr(self, n) == source), None)
        key = f"{self.key}.{name}" if name else self.key
        return DataError(f"{key}: {problem}", path=self.file, line=self.line)


def load_streams(path: Path | str) -> list[StreamSpec]:
    """Read and check a streams file; raise `DataError` naming file, line and key on any problem."""
    path = Path(path)
    return _StreamsChecker(path).streams(compose_file(path, "streams", "streams"))


class _StreamsChecker(NodeChecker):
    def streams(self, root: Node | None) -> list[StreamSpec]:
        if root is None:
            raise DataError("file is empty", path=self.path, line=1, expected=_FORMAT_HINT, got="nothing")
        if not isinstance(root, MappingNode):
            raise self.fail(root, "top level", "not a mapping", _FORMAT_HINT, describe(root))
        found = self.mapping(root, "", ("streams",))
        if "streams" not in found:
            raise self.fail(root, "streams", "missing", _FORMAT_HINT)
        node = found["streams"][1]
        if not isinstance(node, SequenceNode) or not node.value:
            raise self.fail(
                node, "streams", "not a list of streams", "a list, each item starting with '- id:'", describe(node)
            )
        specs: list[StreamSpec] = []
        first_line: dict[str, int] = {}
        for i, item in enumerate(node.value):
            spec = self.stream(item, f"streams[{i}]")
            if spec.id in first_line:
                raise self.fail(
                    item,
                    f"streams[{i}].id",
                    f"id already used on line {first_line[spec.id]}",
                    "unique ids",
                    repr(spec.id),
                )
            first_line[spec.id] = item.start_mark.line + 1
            specs.append(spec)
        return specs

    def stream(self, node: Node, key: str) -> StreamSpec:
        if not isinstance(node, MappingNode):
            raise self.fail(node, key, "not a mapping", "id: and input: (or audio:/video:) under '- '", describe(node))
        found = self.mapping(node, key, STREAM_KEYS)
        if "id" not in found:
            raise self.fail(node, f"{key}.id", "missing", "a stream id: 1-64 of A-Z a-z 0-9 _ . -")
        stream_id = self.text(found["id"][1], f"{key}.id", "id")
        if STREAM_ID.fullmatch(stream_id) is None:
            raise self.fail(
                found["id"][1], f"{key}.id", "not a usable topic level", "1-64 of A-Z a-z 0-9 _ . -", repr(stream_id)
            )
        values = {
            name: self.source(found[name][1], f"{key}.{name}") for name in ("input", "audio", "video") if name in found
        }
        if "input" in values and ("audio" in values or "video" in values):
            raise self.fail(node, key, "both input and audio/video", "either input, or audio and/or video")
        if not values or all(value == "none" for value in values.values()):
            raise self.fail(node, key, "no source", "input: FILE|URL, or audio: and/or video: other than none")
        return StreamSpec(id=stream_id, **values, file=self.path, line=node.start_mark.line + 1, key=key)

    def source(self, node: Node, key: str) -> str:
        # `video: 0` is a camera index: numbers are taken as written, not as numbers.
        if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
            return self.text(node, key, "source")
        raise self.fail(node, key, "not a source", "a file, URL, device name or index", describe(node))
