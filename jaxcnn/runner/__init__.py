"""The jaxcnn experiment runner: ``jaxcnn train CONFIG.yaml [key.sub=value ...]``.

Modules, one concept each:

- :mod:`.typed` / :mod:`.yaml_io` / :mod:`.config`: YAML + overrides → one frozen, validated
  :class:`~.config.Config`;
- :mod:`.datasets`: image sources (digits, synthetic, npz, image folder, ArrayRecord);
  :mod:`.records`: the ArrayRecord format; :mod:`.data_cli`: ``jaxcnn data convert``;
- :mod:`.pipeline`: the grain pipeline (per-epoch shuffling, each process's rows of each global batch);
  :mod:`.data`: global batches on the mesh;
- :mod:`.optim`: optax optimizer and schedule from the config;
- :mod:`.state`: model → (graphdef, train state) and its shardings;
- :mod:`.step`: the jitted train / eval steps;
- :mod:`.checkpoint`: orbax save / restore of the train state (atomic, multi-host, any mesh);
- :mod:`.metrics`: ``metrics.jsonl`` and plots; :mod:`.display`: progress bar and summary table;
- :mod:`.setup`: processes, mesh, model, run directory; :mod:`.aot`: compile-only checks;
- :mod:`.train`: the training loop; :mod:`.cli`: the command line;
- :mod:`.cluster`: joining a multi-process job (the only caller of ``jax.distributed.initialize()``);
  :mod:`.launch`: ``jaxcnn launch``, a multi-process job on one machine.
"""

from jaxcnn.runner.config import Config, load_config
from jaxcnn.runner.typed import ConfigError

__all__ = ["Config", "ConfigError", "load_config"]
