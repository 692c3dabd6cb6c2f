"""edgezo: federated fine-tuning of language models on edge devices with FedSPZO.

The core (this package) never touches framework tensors: it derives perturbation keys,
runs the estimators against an executor protocol, aggregates scalars and keeps the seed log.
Executors live in ``edgezo.backends``.
"""

__version__ = "0.1.0"
