"""The LMCache ``ConnectorAdapter`` of the plug-in: ``plugin://rvs[.instance]`` and ``rvs://``."""

from __future__ import annotations

from lmcache.v1.storage_backend.connector import (ConnectorAdapter, ConnectorContext,
                                                  extract_plugin_type)
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from ._options import PluginOptions
from .connector import SharedValkeyConnector

PLUGIN_TYPE = "rvs"


class SharedValkeyConnectorAdapter(ConnectorAdapter):
    """Creates a ``SharedValkeyConnector`` for ``plugin://rvs`` (or ``rvs.<instance>``) and for
    ``rvs://`` URLs; options come from ``remote_storage_plugin.<plugin name>.*``."""

    def __init__(self) -> None:
        super().__init__(f"{PLUGIN_TYPE}://")

    def can_parse(self, url: str) -> bool:
        """Whether ``url`` names this plug-in (``plugin://rvs[.instance]`` or ``rvs://``)."""
        if url.startswith(self.schema):
            return True
        return url.startswith("plugin://") and \
            extract_plugin_type(url[len("plugin://"):]) == PLUGIN_TYPE

    def create_connector(self, context: ConnectorContext) -> RemoteConnector:
        """The connector for ``context``. Raises ConfigError for a missing or bad option
        (LMCache logs it and runs without this backend: check the log, or ``stats``)."""
        name = context.plugin_name or PLUGIN_TYPE
        extra = context.config.extra_config if context.config is not None else None
        options = PluginOptions.from_extra_config(extra, name)
        return SharedValkeyConnector(context.config, context.metadata,
                                     context.local_cpu_backend, options)


__all__ = ["PLUGIN_TYPE", "SharedValkeyConnectorAdapter"]
