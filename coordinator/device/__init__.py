"""The device agent's side: the protocol loop of one device and its checkpoint download. Imports
``wire``, never ``server``."""
