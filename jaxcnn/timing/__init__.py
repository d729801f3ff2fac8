"""Seconds, not bytes: timing profiles of a backend (``jaxcnn calibrate``) and the fits they hold.

- :mod:`jaxcnn.timing.profile`: the profile (keyed by platform, device kind, device and process counts
  and jax version), its JSON file in a cache directory, and the least-squares fits.
- :mod:`jaxcnn.timing.collectives`: each collective kind timed over group and buffer sizes.
- :mod:`jaxcnn.timing.compute`: local convolutions (three passes) and memory-bound work.
- :mod:`jaxcnn.timing.presets`: published figures for hardware that cannot be measured here.
- :mod:`jaxcnn.timing.calibrate`, :mod:`jaxcnn.timing.cli`: ``jaxcnn calibrate``.
"""

from jaxcnn.timing.profile import (
    COLLECTIVE_KINDS,
    CONV_PASSES,
    CollectiveFit,
    LinearFit,
    Profile,
    ProfileKey,
    current_key,
    load_profile,
    profile_dir,
    save_profile,
)

__all__ = [
    "COLLECTIVE_KINDS",
    "CONV_PASSES",
    "CollectiveFit",
    "LinearFit",
    "Profile",
    "ProfileKey",
    "current_key",
    "load_profile",
    "profile_dir",
    "save_profile",
]
