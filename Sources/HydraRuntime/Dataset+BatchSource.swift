import HydraCore

extension Dataset: BatchSource {}
