"""The sealed appliance image: build it from Debian packages, boot it under QEMU.

- ``spec``: image recipes (``openpcc-image/1``)
- ``build``: the reproducible builder and its content-keyed cache
- ``run``: boot a built image in an emulated VM (TCG or KVM, no TEE) with the gateway forwarded
"""

from __future__ import annotations

from cvm_boot.image.build import BuildResult, build_image, default_cache
from cvm_boot.image.spec import ImageRecipe, load_image_recipe

__all__ = ["BuildResult", "ImageRecipe", "build_image", "default_cache", "load_image_recipe"]
