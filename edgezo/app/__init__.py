"""The application layer: what runs a job for a user, above the core.

``cli`` and ``commands/`` (the CLI, one file per command), ``jobs/`` (SimulateJob, CoordinateJob,
JoinJob: what a command runs), ``engines/`` (where simulate's virtual devices run: Ray), ``api``
(the Python API that ``edgezo.simulate`` and ``edgezo.SimulateJob`` re-export), ``settings``
(every command's own options), ``outputs``, ``plot`` and ``runfolder`` (what a job writes to
``--out``), ``fleet`` (simulate's ``--devices``). This layer may import everything; nothing below
it (the core in ``edgezo/``, ``edgezo.backends``, ``edgezo.coordinator``) imports it
(tests/test_architecture.py holds that rule).
"""
