"""Engines that run a simulation's virtual devices somewhere else than the driver's process.

``edgezo.simulation.run_simulation`` runs every device in its own process by default
(``local_rounds``); an engine (``ray_engine.RayEngine``) is passed in as its ``round_fn`` (its
``round``) and ``follow``: it computes the devices' rounds elsewhere, each with
``edgezo.engine.device_round``, and hands back their results, so the driver aggregates them with
the same round engine and seed log and the job ends on the same model bit for bit. An engine imports its framework (Ray) only when it starts: the core never needs
it installed.
"""
