import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import HydraRuntime

/// The one place that names the built-in plugins.
enum Builtins {
  static func registry() -> PluginRegistry {
    let registry = PluginRegistry()
    registry.registerKernels("cpu") { threads, memory in CPUKernels(threads: threads, memory: memory) }
    registry.registerKernels("reference") { _, memory in ReferenceKernels(memory: memory) }
    return registry
  }

  /// What `job.toml` may name. Partitioning and multi-device scheduling arrive with their plugins;
  /// until then each model is one shard (`whole`) and devices train whole models (`sequential`).
  static func known(_ registry: PluginRegistry) -> KnownPlugins {
    KnownPlugins(
      backends: ["shm"], kernels: registry.kernelsNames, partitioners: ["whole"],
      schedulers: ["sequential"], defaultPartitioner: "whole", defaultScheduler: "sequential")
  }
}
