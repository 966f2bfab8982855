import HydraCore
