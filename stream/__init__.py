"""dfmq-stream: live multimodal intent recognition (DFMQ-MC) published over MQTT."""

__version__ = "0.1.0"
