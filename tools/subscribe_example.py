"""The smallest useful subscriber: print each intent event of a dfmq stream.

.venv/bin/python tools/subscribe_example.py --host 127.0.0.1 --port 1883 --stream cam0
"""

from __future__ import annotations

import argparse
import json

import paho.mqtt.client as mqtt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--stream", default="+", help="stream id, or + for all")
    args = parser.parse_args()

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe(f"dfmq/{args.stream}/intent", qos=1)
        client.subscribe(f"dfmq/{args.stream}/status", qos=1)

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        if message.topic.endswith("/status"):
            print(f"{message.topic}: {message.payload.decode()}")
            return
        event = json.loads(message.payload)
        decision = event["intent"] if event["recognized"] else f"not recognized: {event['reason']}"
        print(
            f"[{event['stream_id']}] {event['start']:.1f}-{event['end']:.1f}s {decision} "
            f"({event['confidence']:.2f}) quality={event['quality']} weights={event['weights']} "
            f"text={event.get('text')!r}"
        )

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_forever()


if __name__ == "__main__":
    main()
