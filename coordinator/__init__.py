"""The federation over MQTT: the wire, the coordinator (server side) and the device agent.

The modules by side (one flat folder for now; issue 25 moves them into subpackages later):

- the wire, shared by both sides: ``messages`` (the message types and their encoding),
  ``topics`` (topic names), ``trainables`` (the announced trainable tensors), ``PROTOCOL.md``;
- the transport, behind ``link.Link`` (what both sides are written against): ``transport``
  (``MqttLink``), ``broker_address``, ``mqtt_connect``, ``mqtt_acks``, ``mqtt_mirror``,
  ``signed_link`` (signing), ``broker`` (the embedded broker);
- the server side: ``server`` (the ``Coordinator``), ``pump``, ``round_service``, ``rounds``,
  ``log_service``, ``presence``, ``planning``, ``state``, ``crashpoints``, the checkpoint
  (``checkpoint``, ``checkpoint_format``, ``atomic_files``, ``checkpoint_server``), and the
  browser devices' page (``web_server``, ``web_serving``);
- the device side: ``device`` (the ``Device`` agent), ``checkpoint_client``, ``catchup_cost``.
"""
