"""The federation over MQTT: the wire, the coordinator (server side) and the device agent.

Three subpackages, one per side, with the protocol (``PROTOCOL.md``) beside them:

- ``wire``: what both sides share: ``messages`` (the message types and their encoding),
  ``topics`` (topic names), ``trainables`` (the announced trainable tensors), ``checkpoint_format``
  and ``atomic_files`` (the checkpoint's files, written by the server and checked by the device),
  and the transport behind ``link.Link`` (what both sides are written against): ``transport``
  (``MqttLink``), ``broker_address``, ``mqtt_connect``, ``mqtt_acks``, ``mqtt_mirror``,
  ``signed_link`` (signing);
- ``server``: the coordinator: ``coordinator`` (the ``Coordinator``), ``pump``, ``round_service``,
  ``rounds``, ``log_service``, ``presence``, ``planning``, ``state``, ``crashpoints``,
  ``checkpoint_server``, the browser devices' page (``web_server``, ``web_serving``) and ``broker``
  (the embedded broker the coordinator starts without --broker);
- ``device``: the device agent: ``device`` (the ``Device``), ``checkpoint_client``, ``catchup_cost``.

The device side imports nothing from the server side and the server side nothing from the device
side (``tests/test_architecture.py``): what both need is in ``wire``.
"""
