"""MQTT coordinator and device agent (see issue: real federation over MQTT)."""
