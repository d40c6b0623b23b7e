"""Home Assistant MQTT discovery: the payloads against the documented keys, and the sink on a real
Mosquitto, in a real `dfmq run`."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model.errors import ConfigError
from stream.cli import main
from stream.homeassistant import NOT_RECOGNIZED, HomeAssistantSink, config_topics, discovery_configs
from stream.messages import IntentEvent
from stream.options import BrokerOptions, HomeAssistantOptions, PipelineOptions
from stream.publisher import Publisher
from stream.sinks import MqttSink
from tests.conftest import Mosquitto, require_binary, until, wait_until
from tests.test_pipeline import HOME_INTENTS

# The keys checked against Home Assistant's documentation (integrations/mqtt discovery,
# integrations/event.mqtt and integrations/sensor.mqtt, "Configuration Variables"): every key sent
# must be one of these. Options common to MQTT entities:
COMMON_KEYS = {
    "availability",
    "availability_mode",
    "availability_template",
    "availability_topic",
    "default_entity_id",
    "device",
    "enabled_by_default",
    "encoding",
    "entity_category",
    "entity_picture",
    "icon",
    "json_attributes_template",
    "json_attributes_topic",
    "name",
    "origin",
    "payload_available",
    "payload_not_available",
    "platform",
    "qos",
    "state_topic",
    "unique_id",
    "value_template",
}
EVENT_KEYS = COMMON_KEYS | {"device_class", "event_types"}
SENSOR_KEYS = COMMON_KEYS | {
    "device_class",
    "expire_after",
    "force_update",
    "last_reset_value_template",
    "options",
    "state_class",
    "suggested_display_precision",
    "unit_of_measurement",
}
DEVICE_KEYS = {
    "configuration_url",
    "connections",
    "hw_version",
    "identifiers",
    "manufacturer",
    "model",
    "model_id",
    "name",
    "serial_number",
    "suggested_area",
    "sw_version",
    "via_device",
}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
# <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids of [a-zA-Z0-9_-]
DISCOVERY_TOPIC = re.compile(r"homeassistant/(event|sensor)/[a-zA-Z0-9_-]+/[a-zA-Z0-9_-]+/config")


class Listener:
    """paho-mqtt on a thread, keeping (topic, payload, retain) of every message on `topics`."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha-test-{secrets.token_hex(3)}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload, bool(m.retain)))
        self.client.on_subscribe = lambda *_: setattr(self, "subscribed", True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(lambda: self.subscribed, 5, "the listener's subscription")

    def on(self, topic: str) -> list[tuple[bytes, bool]]:
        return [(p, r) for t, p, r in self.messages if t == topic]

    def configs(self) -> dict[str, dict[str, Any]]:
        """The newest non-empty payload of each config topic."""
        return {t: json.loads(p) for t, p, _ in self.messages if t.endswith("/config") and p}

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained_configs(port: int, settle_s: float = 0.5) -> dict[str, bytes]:
    """What a client subscribing now gets as retained config messages (Home Assistant starting)."""
    listener = Listener(port, ["homeassistant/#"])
    time.sleep(settle_s)  # retained messages arrive right after SUBACK; none may come at all
    listener.stop()
    return {t: p for t, p, r in listener.messages if r and t.endswith("/config")}


def event(text: str | None, intent: str | None, reason: str | None) -> IntentEvent:
    return IntentEvent(
        stream_id="ha",
        utterance_id=0,
        start=1.0,
        end=2.5,
        speech_end_wall=time.time(),
        published_wall=time.time(),
        text=text,
        recognized=intent is not None,
        reason=reason,
        intent=intent,
        confidence=0.8 if intent else 0.1,
        transcript_confidence=0.9,
        scope=0.9,
        top_k=[],
        quality={"text": 0.9, "audio": 0.8, "video": 0.7},
        weights={"audio": 0.6, "video": 0.4},
        engine="onnxruntime",
        latency_ms={"total": 100.0},
    )


def test_discovery_configs_use_documented_keys_and_topics() -> None:
    configs = discovery_configs("homeassistant", "cam.0", ["Lights", "Music"])
    assert list(configs) == config_topics("homeassistant", "cam.0")
    assert len(configs) == 6
    for topic, config in configs.items():
        assert DISCOVERY_TOPIC.fullmatch(topic), topic
        component = topic.split("/")[1]
        assert set(config) <= (EVENT_KEYS if component == "event" else SENSOR_KEYS), topic
        assert set(config["device"]) <= DEVICE_KEYS and set(config["origin"]) <= ORIGIN_KEYS
        assert config["device"]["identifiers"] == ["dfmq_cam_0"]  # one device per stream
        assert config["availability_topic"] == "dfmq/cam.0/status"
        assert (config["payload_available"], config["payload_not_available"]) == ("online", "offline")
        assert config["state_topic"].startswith("dfmq/cam.0/")
    uniques = [c["unique_id"] for c in configs.values()]
    assert len(set(uniques)) == len(uniques)
    intent = configs["homeassistant/event/dfmq_cam_0/intent/config"]
    assert intent["event_types"] == ["Lights", "Music", NOT_RECOGNIZED]
    assert intent["state_topic"] == "dfmq/cam.0/homeassistant/intent"
    sensors = {t.split("/")[3]: c for t, c in configs.items() if "/sensor/" in t}
    assert set(sensors) == {"audio_quality", "video_quality", "text_quality", "weight_audio", "weight_video"}
    # Fed by the topics the MQTT sink publishes anyway, read through the fields those messages have.
    assert sensors["audio_quality"]["state_topic"] == "dfmq/cam.0/quality"
    assert sensors["audio_quality"]["value_template"] == "{{ value_json.audio }}"
    assert sensors["text_quality"]["value_template"] == "{{ value_json.quality.text }}"
    assert sensors["weight_video"]["state_topic"] == "dfmq/cam.0/intent"
    assert sensors["weight_video"]["value_template"] == "{{ value_json.weights.video }}"
    with pytest.raises(ConfigError, match="not_recognized"):
        discovery_configs("homeassistant", "cam0", ["Lights", NOT_RECOGNIZED])


@pytest.mark.broker
def test_sink_retains_configs_announces_again_on_birth_and_removes_at_close(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path).start()
    listener = Listener(broker.port, ["homeassistant/#", "dfmq/ha/homeassistant/intent"])
    configs = discovery_configs("homeassistant", "ha", ["Lights", "Music"])

    def announced() -> list[str]:
        return [t for t, p, _ in listener.messages if t.endswith("/config") and p]

    async def scenario() -> dict[str, bytes]:
        publisher = Publisher(BrokerOptions(), "ha", "127.0.0.1", broker.port, False)
        ha_options = HomeAssistantOptions(enabled=True, remove_at_close=True)
        ha = HomeAssistantSink(publisher, PipelineOptions(stream_id="ha"), ha_options, ["Lights", "Music"])
        sinks = [MqttSink(publisher), ha]
        for sink in sinks:
            await sink.start()
        await until(lambda: len(announced()) >= len(configs), 5, "the configs")
        before = await asyncio.to_thread(retained_configs, broker.port)
        listener.publish("homeassistant/status", b"offline")  # Home Assistant going away changes nothing
        listener.publish("homeassistant/status", b"online")  # ... and its birth message brings them again
        await until(lambda: len(announced()) >= 2 * len(configs), 5, "the configs announced again")
        for message in (event("turn off the lights", "Lights", None), event("uh", None, "out_of_scope")):
            ha.handle(message)
        ha.handle(event(None, "Music", None))  # transcripts off
        await until(lambda: len(listener.on("dfmq/ha/homeassistant/intent")) == 3, 5, "three events")
        for sink in reversed(sinks):
            await sink.close()
        return before

    try:
        before = asyncio.run(scenario())
        after = retained_configs(broker.port)
    finally:
        listener.stop()
        broker.stop()
    assert set(before) == set(configs)
    assert all(json.loads(payload) == configs[topic] for topic, payload in before.items())
    assert announced() == [*configs, *configs]
    events = [(json.loads(p), retained) for p, retained in listener.on("dfmq/ha/homeassistant/intent")]
    assert [e["event_type"] for e, _ in events] == ["Lights", NOT_RECOGNIZED, "Music"]
    assert not any(retained for _, retained in events)  # Home Assistant ignores retained events
    assert events[0][0] == {"event_type": "Lights", "confidence": 0.8, "reason": None, "utterance_id": 0} | {
        "transcript": "turn off the lights"
    }
    assert events[1][0]["reason"] == "out_of_scope"
    assert "transcript" not in events[2][0]
    assert after == {}  # remove_at_close: empty retained configs delete them


@pytest.mark.broker
def test_dfmq_run_announces_the_stream_sends_intent_events_and_remove_deletes_them(tmp_path: Path) -> None:
    """`dfmq run --homeassistant` with a new intent set, as a user would; then
    `dfmq run --homeassistant-remove` on the same broker and stream id."""
    require_binary("espeak-ng", "espeak-ng")
    from stream.render import speak, write_clip

    intents = tmp_path / "home.yaml"
    intents.write_text(HOME_INTENTS)
    sentences = ["please turn off the kitchen lights", "my grandmother was born in spring"]
    pause = np.zeros(16000, np.float32)
    clip = tmp_path / "home.mp4"
    write_clip(clip, np.concatenate([pause, *(np.concatenate([speak(s), pause]) for s in sentences)]), [], 15)
    broker = Mosquitto(tmp_path, persistent=True).start()
    listener = Listener(broker.port, ["homeassistant/#", "dfmq/home/#"])
    url = f"mqtt://127.0.0.1:{broker.port}"
    try:
        argv = ["run", "--input", str(clip), "--pace", "fast", "--engine", "onnxruntime", "--intents", str(intents)]
        assert main([*argv, "--broker", url, "--stream-id", "home", "--homeassistant", "--no-transcripts"]) == 0
        topic = "dfmq/home/homeassistant/intent"
        wait_until(lambda: len(listener.on(topic)) >= len(sentences), 10, "two Home Assistant events")
        kept = retained_configs(broker.port)
        statuses_before = len(listener.on("dfmq/home/status"))
        assert main(["run", "--homeassistant-remove", "--broker", url, "--stream-id", "home"]) == 0
        removed = retained_configs(broker.port)
        time.sleep(0.2)
    finally:
        listener.stop()
        broker.stop()
    events = [json.loads(p) for p, _ in listener.on(topic)]
    assert [e["event_type"] for e in events] == ["Lights", NOT_RECOGNIZED], events
    assert events[1]["reason"] == "out_of_scope"
    assert all("transcript" not in e for e in events)  # --no-transcripts reaches this output too
    assert set(kept) == set(config_topics("homeassistant", "home"))  # left for Home Assistant after the run
    intent_config = json.loads(kept["homeassistant/event/dfmq_home/intent/config"])
    assert intent_config["event_types"] == ["Lights", "Music", NOT_RECOGNIZED]
    assert {json.loads(p)["state_topic"] for p in kept.values()} >= {"dfmq/home/quality", "dfmq/home/intent"}
    assert [p for p, _ in listener.on("dfmq/home/status")][-1] == b"offline"  # the entities show unavailable
    assert removed == {}
    assert len(listener.on("dfmq/home/status")) == statuses_before  # removal never said the stream is live


def test_remove_needs_an_external_broker(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--homeassistant-remove"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dfmq run: error: option '--homeassistant-remove' expected --broker mqtt://HOST:PORT")
    assert err.count("\n") == 1


@pytest.mark.broker
def test_remove_with_a_streams_file_removes_every_stream_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broker = Mosquitto(tmp_path).start()
    url = f"mqtt://127.0.0.1:{broker.port}"
    streams = tmp_path / "streams.yaml"
    streams.write_text("streams:\n  - id: lobby\n    input: a.mp4\n  - id: desk\n    input: b.mp4\n")
    try:

        async def announce() -> None:
            for stream_id in ("lobby", "desk"):
                publisher = Publisher(BrokerOptions(url=url), stream_id, "127.0.0.1", broker.port, False)
                await publisher.publish_retained([(t, b"{}") for t in config_topics("homeassistant", stream_id)])

        asyncio.run(announce())
        announced = retained_configs(broker.port)
        assert main(["run", "--homeassistant-remove", "--broker", url, "--streams", str(streams)]) == 0
        left = retained_configs(broker.port)
        assert main(["run", "--homeassistant-remove", "--broker", url, "--input", "a.mp4"]) == 2
    finally:
        broker.stop()
    assert {t.split("/")[2] for t in announced} == {"dfmq_lobby", "dfmq_desk"}
    assert left == {}
    out, err = capsys.readouterr()
    assert "of stream lobby" in out and "of stream desk" in out
    assert "option '--input' expected nothing with --homeassistant-remove" in err
