"""The jaxcnn experiment runner: ``jaxcnn train CONFIG.yaml [key.sub=value ...]``.

Modules, one concept each:

- :mod:`.typed` / :mod:`.yaml_io` / :mod:`.config`: YAML + overrides → one frozen, validated
  :class:`~.config.Config`;
- :mod:`.datasets`: image sources (digits, synthetic, npz, image folder) as NumPy arrays;
- :mod:`.data`: deterministic per-epoch shuffling and per-host global batches;
- :mod:`.optim`: optax optimizer and schedule from the config;
- :mod:`.state`: model → (graphdef, train state) and its shardings;
- :mod:`.step`: the jitted train / eval steps;
- :mod:`.checkpoint`: orbax save / restore of the train state;
- :mod:`.metrics`: ``metrics.jsonl`` and plots; :mod:`.display`: progress bar and summary table;
- :mod:`.setup`: processes, mesh, model, run directory; :mod:`.aot`: compile-only checks;
- :mod:`.train`: the training loop; :mod:`.cli`: the command line.

This is the only part of jaxcnn that may call ``jax.distributed.initialize()``.
"""

from jaxcnn.runner.config import Config, load_config
from jaxcnn.runner.typed import ConfigError

__all__ = ["Config", "ConfigError", "load_config"]
