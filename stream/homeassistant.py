"""Home Assistant MQTT discovery: each stream appears in Home Assistant as a device, with no YAML there.

One device per stream (identifiers from the stream id) with:

- an `event` entity, "Intent": each intent event is published to its state topic
  (dfmq/<stream_id>/homeassistant/intent, not retained: Home Assistant ignores retained events) as
  JSON with `event_type` (the intent's name, or `not_recognized`), `confidence`, `reason`,
  `utterance_id`, and `transcript` unless transcripts are off;
- `sensor` entities that read the topics the MQTT sink already publishes, through value templates:
  audio and video quality from the running quality (dfmq/<stream_id>/quality), text quality and the
  fusion weights w_audio and w_video from the intent events (dfmq/<stream_id>/intent).

Every entity is available while the stream's retained status (dfmq/<stream_id>/status, with its
last will) says `online`. The discovery configs are retained at
`<prefix>/<component>/dfmq_<stream_id>/<object_id>/config`, sent again whenever Home Assistant's
birth message (`<prefix>/status` = `online`) arrives, and removed (an empty retained config) by
`dfmq run --homeassistant-remove`, or at the end of a run when `remove_at_close` is set.
Keys follow https://www.home-assistant.io/integrations/mqtt/ (discovery),
/integrations/event.mqtt/ and /integrations/sensor.mqtt/.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from model.errors import ConfigError
from stream import __version__
from stream.messages import IntentEvent, SinkMessage
from stream.options import HomeAssistantOptions, PipelineOptions
from stream.publisher import Publisher

log = logging.getLogger("dfmq.homeassistant")

NOT_RECOGNIZED = "not_recognized"  # the event type of an utterance no intent of the set fits
EVENT_LEAF = "homeassistant/intent"  # dfmq/<stream_id>/<EVENT_LEAF>: the event entity's state topic

# object_id -> (name, topic leaf under dfmq/<stream_id>/, value template)
SENSORS: dict[str, tuple[str, str, str]] = {
    "audio_quality": ("Audio quality", "quality", "{{ value_json.audio }}"),
    "video_quality": ("Video quality", "quality", "{{ value_json.video }}"),
    "text_quality": ("Text quality", "intent", "{{ value_json.quality.text }}"),
    "weight_audio": ("Fusion weight audio", "intent", "{{ value_json.weights.audio }}"),
    "weight_video": ("Fusion weight video", "intent", "{{ value_json.weights.video }}"),
}


def node_id(stream_id: str) -> str:
    """The discovery topic's node id: Home Assistant accepts [a-zA-Z0-9_-] there, a stream id may hold '.'."""
    return "dfmq_" + stream_id.replace(".", "_")


def config_topics(prefix: str, stream_id: str) -> list[str]:
    """Every discovery config topic of a stream (what removal empties)."""
    node = node_id(stream_id)
    return [f"{prefix}/event/{node}/intent/config"] + [f"{prefix}/sensor/{node}/{key}/config" for key in SENSORS]


def discovery_configs(prefix: str, stream_id: str, intent_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """config topic -> discovery payload, for the stream's event entity and its sensors."""
    if NOT_RECOGNIZED in intent_names:
        raise ConfigError(
            "--intents",
            f"intent names other than '{NOT_RECOGNIZED}' (Home Assistant's event type for an utterance no intent fits)",
            NOT_RECOGNIZED,
        )
    node = node_id(stream_id)
    base = f"dfmq/{stream_id}"
    common: dict[str, Any] = {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": {
            "identifiers": [node],
            "name": f"dfmq {stream_id}",
            "manufacturer": "dfmq-stream",
            "model": "DFMQ-MC live intent recognition",
            "sw_version": __version__,
        },
        "origin": {"name": "dfmq-stream", "sw_version": __version__},
    }
    topics = config_topics(prefix, stream_id)
    configs: dict[str, dict[str, Any]] = {
        topics[0]: {
            **common,
            "name": "Intent",
            "unique_id": f"{node}_intent",
            "state_topic": f"{base}/{EVENT_LEAF}",
            "event_types": [*intent_names, NOT_RECOGNIZED],
            "icon": "mdi:account-voice",
            "qos": 1,
        }
    }
    for topic, (key, (name, leaf, template)) in zip(topics[1:], SENSORS.items()):
        configs[topic] = {
            **common,
            "name": name,
            "unique_id": f"{node}_{key}",
            "state_topic": f"{base}/{leaf}",
            "value_template": template,
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "icon": "mdi:tune-variant" if key.startswith("weight") else "mdi:signal",
        }
    return configs


class HomeAssistantSink:
    """The discovery configs and the intent events of one stream, on the MQTT sink's connection
    (which it neither opens nor closes)."""

    name = "homeassistant"

    def __init__(
        self,
        publisher: Publisher,
        options: PipelineOptions,
        ha: HomeAssistantOptions,
        intent_names: Sequence[str],
    ) -> None:
        self.publisher = publisher
        self.options = options
        self.ha = ha
        self.configs = discovery_configs(ha.prefix, options.stream_id, intent_names)
        self.announcements = 0
        self._closed = False
        # Home Assistant publishes its birth message when it starts, and forgets configs that were
        # not retained (or were retained on a broker that restarted empty): each one is answered.
        publisher.subscribe(f"{ha.prefix}/status", self._on_ha_status)

    async def start(self) -> None:
        self.announce()

    def announce(self) -> None:
        for topic, config in self.configs.items():
            self.publisher.send(topic, config, qos=1, retain=True)
        self.announcements += 1
        log.info("announced %d entities to Home Assistant under %s/", len(self.configs), self.ha.prefix)

    def _on_ha_status(self, payload: bytes) -> None:
        if payload.strip() == b"online" and not self._closed:
            self.announce()

    def handle(self, message: SinkMessage) -> None:
        if not isinstance(message, IntentEvent):
            return
        event: dict[str, Any] = {
            "event_type": message.intent if message.intent is not None else NOT_RECOGNIZED,
            "confidence": message.confidence,
            "reason": message.reason,
            "utterance_id": message.utterance_id,
        }
        if message.text is not None:  # None: transcripts are switched off, and stay out of here too
            event["transcript"] = message.text
        self.publisher.send(self.publisher.topic(EVENT_LEAF), event, qos=1)

    async def close(self) -> None:
        self._closed = True
        if self.ha.remove_at_close:
            for topic in self.configs:
                self.publisher.send(topic, b"", qos=1, retain=True)
            log.info("removed the %d Home Assistant entities of stream %s", len(self.configs), self.options.stream_id)


async def remove_entities(publisher: Publisher, prefix: str) -> list[str]:
    """Empty the retained discovery configs of the publisher's stream, which Home Assistant takes as
    removal; on a connection of its own, so no status says the stream is live. Returns the topics."""
    topics = config_topics(prefix, publisher.stream_id)
    await publisher.publish_retained([(topic, b"") for topic in topics])
    return topics
