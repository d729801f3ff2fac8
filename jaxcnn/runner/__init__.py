"""The jaxcnn experiment runner: ``jaxcnn train CONFIG.yaml [key.sub=value ...]``.

Packages and modules, one concept each:

- :mod:`.config`: the config schema, one module per section: YAML + overrides → one frozen, validated
  :class:`~.config.Config`;
- :mod:`.data`: the input pipeline: image sources, the grain pipeline, global batches on the mesh;
- :mod:`.optim`: optax optimizer and schedule from the config;
- :mod:`.state`: model → (graphdef, train state) and its shardings;
- :mod:`.step`: the jitted train / eval steps;
- :mod:`.prepare`: everything a run needs before its first step (mesh, model, state, compiled step,
  predictions), shared by :mod:`.train` and :mod:`.aot` (compile-only checks);
- :mod:`.setup`: processes, mesh, model, run directory; :mod:`.autoplan`: ``auto`` placements as config
  errors; :mod:`.fit`: does the state fit the devices; :mod:`.predict`: metered and predicted figures;
- :mod:`.train`: the training loop; :mod:`.checkpoint`: orbax save / restore of the train state;
- :mod:`.inference`: a trained run's model on any mesh (:func:`.inference.load`), its test figures and
  predictions; :mod:`.inference_cli`: ``jaxcnn eval`` and ``jaxcnn predict``;
- :mod:`.metrics`: ``metrics.jsonl`` and plots; :mod:`.display`: progress bar and summary table;
- :mod:`.cli`: the command line; :mod:`.cluster`: joining a multi-process job (the only caller of
  ``jax.distributed.initialize()``); :mod:`.launch`: ``jaxcnn launch``, a multi-process job on one machine.
"""

from jaxcnn.runner.config import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
