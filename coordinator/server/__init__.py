"""The coordinator's side: the round loop and its services, the seed log, checkpoints served over
HTTP, the browser devices' page and the embedded broker. Imports ``wire``, never ``device``."""
