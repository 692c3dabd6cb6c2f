"""What the coordinator and a device share: the messages, the topics, the checkpoint's format and
the transport (``link.Link``, ``MqttLink``). Imports neither ``server`` nor ``device``."""
