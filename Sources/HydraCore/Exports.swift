// The plugin vocabulary, visible to every user of this module.
@_exported import HydraPluginAPI
