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
from typing import Any, Protocol

from model.intents import topic_name
from stream.messages import IntentEvent, PartialIntent, QualityReport, SinkMessage
from stream.publisher import Publisher


class Sink(Protocol):
    name: str

    async def start(self) -> None:
        """Open the output (connect, create a window); raise a DfmqError when it cannot."""

    def handle(self, message: SinkMessage) -> None:
        """Take one message without blocking."""

    async def close(self) -> None:
        """Deliver what is queued (or say what could not be) and release the output."""


def _payload(message: IntentEvent | PartialIntent) -> dict[str, Any]:
    payload = asdict(message)
    if message.text is None:  # transcripts switched off: no key at all, not null
        del payload["text"]
    return payload


class MqttSink:
    """dfmq/<stream_id>/intent (QoS 1), /partial and /quality (QoS 0) and the retained /status, through one
    Publisher, whose outbox keeps intents while the broker is away."""

    name = "mqtt"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def start(self) -> None:
        await self.publisher.start()

    def handle(self, message: SinkMessage) -> None:
        if isinstance(message, IntentEvent):
            self.publisher.send(self.publisher.topic("intent"), _payload(message), qos=1, handover_stamp=True)
        elif isinstance(message, PartialIntent):
            self.publisher.send(self.publisher.topic("partial"), _payload(message), qos=0)
        elif isinstance(message, QualityReport):
            self.publisher.send(self.publisher.topic("quality"), message.payload(), qos=0)

    async def close(self) -> None:
        await self.publisher.close()


class HermesSink:
    """Rhasspy Hermes messages, on the MQTT sink's connection (which it neither opens nor closes).

    Per utterance, in the order a Rhasspy ASR and NLU publish them: `hermes/asr/textCaptured`
    (AsrTextCaptured), then `hermes/intent/<IntentName>` (NluIntent) or
    `hermes/nlu/intentNotRecognized` (NluIntentNotRecognized). The keys are those of rhasspy-hermes'
    dataclasses (rhasspyhermes/asr.py, nlu.py) in its camelCase JSON, every one present (null where
    this pipeline has nothing to say), as rhasspy-hermes' own `payload()` writes them."""

    name = "hermes"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def start(self) -> None:
        return None

    def handle(self, message: SinkMessage) -> None:
        if not isinstance(message, IntentEvent):
            return
        for topic, payload in hermes_messages(message):
            self.publisher.send(topic, payload, qos=1)

    async def close(self) -> None:
        return None


def hermes_messages(event: IntentEvent) -> list[tuple[str, dict[str, Any]]]:
    """The Hermes (topic, payload) pairs of one intent event."""
    session = f"{event.stream_id}-{event.utterance_id}"
    text = event.text or ""
    messages: list[tuple[str, dict[str, Any]]] = []
    whisper_ms = event.latency_ms.get("asr", 0.0) + event.latency_ms.get("asr_in_pause", 0.0)
    if event.text is not None:
        # textCaptured is the transcript itself: with transcripts switched off it is not sent at all.
        messages.append(
            (
                "hermes/asr/textCaptured",
                {
                    "text": event.text,
                    "likelihood": event.transcript_confidence,
                    # rhasspy-hermes: "the duration it took to do the processing" (Rhasspy's ASRs send
                    # their transcription time), not the length of the utterance; also when Whisper
                    # spent it in the utterance's pause.
                    "seconds": round(whisper_ms / 1000, 4),
                    "siteId": event.stream_id,
                    "sessionId": session,
                    "wakewordId": None,
                    "asrTokens": None,
                    "lang": None,
                },
            )
        )
    if event.intent is None:
        messages.append(
            (
                "hermes/nlu/intentNotRecognized",
                {
                    "input": text,
                    "siteId": event.stream_id,
                    "id": None,
                    # Hermes carries free-form data as a string: why, and how sure the model was.
                    "customData": json.dumps({"reason": event.reason, "confidence": event.confidence}),
                    "sessionId": session,
                },
            )
        )
        return messages
    name = topic_name(event.intent)  # Hermes intent names are one word (they end the topic)
    messages.append(
        (
            f"hermes/intent/{name}",
            {
                "input": text,
                "intent": {"intentName": name, "confidenceScore": event.confidence},
                "siteId": event.stream_id,
                "id": None,
                "slots": [],
                "sessionId": session,
                "customData": None,
                "asrTokens": None,
                "asrConfidence": event.transcript_confidence,
                "rawInput": text,
                "wakewordId": None,
                "lang": None,
            },
        )
    )
    return messages
