"""The run config schema: YAML + ``key.sub=value`` overrides → one frozen, validated :class:`Config`.

One module per section, each the one definition of its keys (type, default, constraints,
``Field(description=...)``); ``configs/base.yaml`` lists every key with its default:

- :mod:`.run`: :class:`Config` (top-level keys, cross-section checks), :func:`load_config`;
- :mod:`.model`: ``model`` (which network; placement strings, checked by :mod:`jaxcnn.nn.placement`);
- :mod:`.mesh`: ``mesh`` (device mesh sizes, resolved against the devices and the batches);
- :mod:`.data`: ``data`` (where images come from);
- :mod:`.train`: ``train``, ``optimizer``, ``checkpoint``;
- :mod:`.cluster`: ``cluster`` (joining a multi-process job);
- :mod:`.typed`: the pydantic glue (strict types, frozen sections, one-line :class:`ConfigError`).

Adding a key: a field in its section class and a line in ``configs/base.yaml``.
"""

from jaxcnn.runner.config.cluster import ClusterConfig
from jaxcnn.runner.config.data import CLASSIFICATION_SOURCES, SEGMENTATION_SOURCES, DataConfig
from jaxcnn.runner.config.mesh import MeshConfig
from jaxcnn.runner.config.model import ModelConfig
from jaxcnn.runner.config.run import Config, from_dict, load_config, save_config
from jaxcnn.runner.config.train import CheckpointConfig, OptimizerConfig, TrainConfig
from jaxcnn.runner.config.typed import ConfigError

__all__ = [
    "CLASSIFICATION_SOURCES",
    "SEGMENTATION_SOURCES",
    "CheckpointConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "MeshConfig",
    "ModelConfig",
    "OptimizerConfig",
    "TrainConfig",
    "from_dict",
    "load_config",
    "save_config",
]
