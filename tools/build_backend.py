"""zsiqa's build backend: setuptools', building in a temporary folder.

setuptools builds a wheel through build/lib and zsiqa.egg-info/ in the checkout and keeps them:
a module deleted from zsiqa/ is still in build/lib and ships in the next wheel, and the checkout
is left with folders it did not have. Here `build` and `egg_info` work in a temporary folder
removed afterwards, so every wheel holds zsiqa/ as it is now and the checkout stays as it was.
Everything else (sdist, editable installs, metadata) is setuptools' own.
"""
import tempfile

from setuptools import build_meta
from setuptools.build_meta import (  # noqa: F401  (the hooks used as setuptools defines them)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    """setuptools' build_wheel with its build and egg-info folders in a temporary folder.

    Args:
        wheel_directory: where the wheel goes.
        config_settings: the frontend's settings; a `--build-option` given there is kept.
        metadata_directory: the prepared metadata, if any.
    Returns:
        The wheel's file name.
    """
    settings = dict(config_settings or {})
    given = settings.get("--build-option") or []
    given = given.split() if isinstance(given, str) else list(given)
    with tempfile.TemporaryDirectory(prefix="zsiqa-build-") as tmp:
        settings["--build-option"] = [*given, "build", "--build-base", f"{tmp}/build", "egg_info", "--egg-base", tmp]
        return build_meta.build_wheel(wheel_directory, settings, metadata_directory)
