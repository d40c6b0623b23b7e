"""Outputs of the live pipeline, each behind one interface.

A sink gets every message the pipeline produces (`stream.messages.SinkMessage`: intent events,
running quality, video frames) and keeps what it shows. `handle` runs on the
event loop and must not block: a sink with slow I/O queues the message and does the work in its
own task, started by `start` and finished by `close`. Adding an output is one class here (or in
its own module) and one line where the pipeline is wired (`stream/run.py`).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Protocol

from stream.messages import IntentEvent, QualityReport, SinkMessage
from stream.publisher import Publisher


class Sink(Protocol):
    name: str

    async def start(self) -> None:
        """Open the output (connect, create a window); raise a DfmqError when it cannot."""

    def handle(self, message: SinkMessage) -> None:
        """Take one message without blocking."""

    async def close(self) -> None:
        """Deliver what is queued (or say what could not be) and release the output."""


class MqttSink:
    """dfmq/<stream_id>/intent (QoS 1), /quality (QoS 0) and the retained /status, through one
    Publisher, whose outbox keeps intents while the broker is away."""

    name = "mqtt"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def start(self) -> None:
        await self.publisher.start()

    def handle(self, message: SinkMessage) -> None:
        if isinstance(message, IntentEvent):
            payload = asdict(message)
            if message.text is None:  # transcripts switched off: no key at all, not null
                del payload["text"]
            self.publisher.send(self.publisher.topic("intent"), payload, qos=1, handover_stamp=True)
        elif isinstance(message, QualityReport):
            self.publisher.send(
                self.publisher.topic("quality"),
                {
                    "schema": message.schema,
                    "stream_id": message.stream_id,
                    "time": message.time_s,
                    "wall": message.wall_s,
                    "audio": message.audio,
                    "video": message.video,
                    "camera": message.camera,
                    "microphone": message.microphone,
                },
                qos=0,
            )

    async def close(self) -> None:
        await self.publisher.close()


class HermesSink:
    """Rhasspy/Snips-compatible `hermes/intent/<intentName>` messages, on the MQTT sink's connection
    (which it neither opens nor closes)."""

    name = "hermes"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def start(self) -> None:
        return None

    def handle(self, message: SinkMessage) -> None:
        if not isinstance(message, IntentEvent):
            return
        session = f"{message.stream_id}-{message.utterance_id}"
        if message.intent is None:
            self.publisher.send(
                "hermes/nlu/intentNotRecognized",
                {
                    "input": message.text or "",
                    "siteId": message.stream_id,
                    "sessionId": session,
                    # Hermes carries free-form data as a string: why, and how sure the model was.
                    "customData": json.dumps({"reason": message.reason, "confidence": message.confidence}),
                },
                qos=1,
            )
            return
        name = message.intent.title().replace(" ", "")
        self.publisher.send(
            f"hermes/intent/{name}",
            {
                "input": message.text or "",
                "intent": {"intentName": name, "confidenceScore": message.confidence},
                "siteId": message.stream_id,
                "sessionId": session,
                "customData": None,
                "slots": [],
                "asrTokens": [],
                "asrConfidence": None,
            },
            qos=1,
        )

    async def close(self) -> None:
        return None
