"""Configs of families (and samplers) from other packages, on genbench's Hydra search path.

A package that registers a family through the ``genbench.families`` entry point group ships its
``model/<name>.yaml`` (and, for the benchmark, ``family_settings/<name>/<section>.yaml``) in a config package
named by an entry point of the ``genbench.configs`` group (``my_package = "my_package.conf"``).
Hydra asks every search-path plugin to extend the search path of every app; this one adds those
packages only to genbench's own apps (the ones whose search path holds genbench's ``conf/``), so
other Hydra apps in the same environment see nothing of genbench.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class GenbenchSearchPathPlugin(SearchPathPlugin):
    """Appends ``pkg://<package>`` for each ``genbench.configs`` entry point to genbench's apps."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:  # noqa: D102
        from genbench import CONFIG_DIR
        from genbench.registry import config_searchpath

        ours = {str(CONFIG_DIR), str(CONFIG_DIR.parent / "conf")}
        if not any(str(e.path).removeprefix("file://").rstrip("/") in ours for e in search_path.get_path()):
            return
        for path in config_searchpath():
            search_path.append(provider="genbench-plugin", path=path)
