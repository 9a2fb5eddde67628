"""Model worker processes: run GIL-bound model code in other processes.

``--workers N`` (or ``workers:`` in a model's ``model.yaml``) moves a model's stages into
worker processes. The server process keeps everything else: decoding, validation, batching,
limits and metrics, so every protocol and feature works unchanged; only the model's own
``preprocess`` / ``predict`` / ``postprocess`` cross the process boundary.

- :mod:`.wire`: the framing and the tensor packing (large tensors travel through shared
  memory, not through the pipe).
- :mod:`.child`: the worker process's loop.
- :mod:`.pool`: the server side: starts workers, places models, dispatches, restarts crashed
  workers.
- :mod:`.proxy`: the :class:`shoal.Model` that stands in for a model living in workers.
"""
