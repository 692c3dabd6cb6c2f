"""Checkpoints of the trainable parameters, served over HTTP so a lagging device can catch up.

The global model is the base weights plus a replay of the seed log. A device that missed a few
rounds replays the missing entries; one that missed many would spend longer regenerating
directions than downloading the trainable parameters, so the coordinator periodically writes a
checkpoint (safetensors, trainable tensors only) and serves it. Weights never travel over MQTT:
the broker carries only the checkpoint's URL and round (see ``Announce.checkpoint_url``).

This module is the one import for all of it; each part lives in a module of one purpose:

* ``checkpoint_format``: the folder layout, writing (crash safe) and reading the newest checkpoint;
* ``atomic_files``: temporary file, fsync, ``os.replace``, fsync of the folder;
* ``checkpoint_server``: the HTTP server (``GET /checkpoint[.json]``);
* ``checkpoint_client``: the verified download;
* ``catchup_cost``: whether a download beats replaying the log (``checkpoint_worth_it``).

Only stdlib, numpy and safetensors are imported, so a device without torch can use it.
"""

from __future__ import annotations

from edgezo.coordinator.catchup_cost import checkpoint_worth_it
from edgezo.coordinator.checkpoint_client import download_checkpoint
from edgezo.coordinator.checkpoint_format import FORMAT, INDEX_NAME, CheckpointInfo, latest_checkpoint, write_checkpoint
from edgezo.coordinator.checkpoint_server import CheckpointServer

__all__ = ["FORMAT", "INDEX_NAME", "CheckpointInfo", "CheckpointServer", "checkpoint_worth_it", "download_checkpoint",
           "latest_checkpoint", "write_checkpoint"]
