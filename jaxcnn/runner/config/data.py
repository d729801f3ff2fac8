"""The ``data`` section of the run config: where images come from."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from jaxcnn.runner.config.train import Fraction, NonNegativeFloat
from jaxcnn.runner.config.typed import Int, NonNegativeInt, PositiveInt, Section, Str, fail

SEGMENTATION_SOURCES = ("ellipsoids",)
CLASSIFICATION_SOURCES = ("digits", "synthetic", "npz", "folder", "array_record")


class DataConfig(Section):
    """Where images come from. Images are NHWC float32 scaled to [0, 1] then standardised."""

    key_path: ClassVar[str] = "data"

    source: Literal["digits", "synthetic", "npz", "folder", "array_record", "ellipsoids"] = Field(
        "digits",
        description="digits (scikit-learn's bundled 8x8 digits), synthetic (random images and labels, "
        "for benchmarks), npz (arrays x_train, y_train, x_test, y_test in path), folder "
        "(path/<class>/*.png|jpg, one subfolder per class), array_record (written by jaxcnn data "
        "convert; read from disk by row, never loaded whole) or ellipsoids (a generated segmentation "
        "task: noisy 2-D images or 3-D volumes of image_size with random ellipsoids, one label per "
        "voxel; needs a segmentation model such as unet)",
    )
    path: Str = Field(
        "",
        description="file (npz), directory (folder) or the OUT.array_record name given to jaxcnn data "
        "convert (array_record: OUT.array_record.json, OUT-train.array_record, OUT-test.array_record); "
        "ignored otherwise",
    )
    test_fraction: Fraction = Field(
        0.2, description="fraction held out as the test split (digits, folder), fixed by seed"
    )
    image_size: tuple[Int, ...] = Field(
        (),
        description="[H, W]: synthetic image size; for folder images, the size to resize to (needs "
        "Pillow) or [] to keep the files' own (equal) size; ellipsoids: [H, W] images or [D, H, W] "
        "volumes",
    )
    channels: PositiveInt = Field(3, description="synthetic image channels")
    num_classes: PositiveInt = Field(10, description="synthetic label count")
    num_train: PositiveInt = Field(1024, description="synthetic / ellipsoids training-set size")
    num_test: PositiveInt = Field(256, description="synthetic / ellipsoids test-set size (held out)")
    num_ellipsoids: tuple[PositiveInt, PositiveInt] = Field(
        (1, 3), description="ellipsoids only: [min, max] ellipsoids per image or volume"
    )
    noise_std: NonNegativeFloat = Field(
        0.5,
        description="ellipsoids only: standard deviation of the background noise (ellipsoids add an "
        "intensity offset in [0.75, 1.25])",
    )
    workers: NonNegativeInt = Field(
        0,
        description="grain worker processes reading training batches, per process (0: read in the "
        "training process)",
    )
    prefetch: PositiveInt = Field(
        2, description="training batches read ahead, and read threads, per process (and per worker)"
    )

    @field_validator("image_size")
    @classmethod
    def _h_w(cls, size: tuple[int, ...]) -> tuple[int, ...]:
        if len(size) not in (0, 2, 3) or not all(s > 0 for s in size):
            fail(f"expected [] or [H, W] with positive sizes (ellipsoids: also [D, H, W]), got {list(size)}")
        return size

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source in ("npz", "folder", "array_record") and not self.path:
            fail(f"required for data.source={self.source!r}", ".path")
        if self.source == "ellipsoids":
            if len(self.image_size) not in (2, 3):
                fail("ellipsoids need [H, W] (2-D images) or [D, H, W] (3-D volumes)", ".image_size")
            if self.num_ellipsoids[0] > self.num_ellipsoids[1]:
                fail(
                    f"must be [min, max] with min <= max, got {list(self.num_ellipsoids)}", ".num_ellipsoids"
                )
        elif len(self.image_size) == 3:
            fail(f"[D, H, W] volumes are for data.source='ellipsoids', not {self.source!r}", ".image_size")
        if self.source == "synthetic" and len(self.image_size) != 2:
            fail("synthetic data needs [H, W]", ".image_size")
        return self

    @property
    def task(self) -> str:
        """``"segmentation"`` (one label per voxel: ``ellipsoids``) or ``"classification"``."""
        return "segmentation" if self.source == "ellipsoids" else "classification"
