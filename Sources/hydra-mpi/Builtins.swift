import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import HydraPartitioners
import HydraRuntime

/// The one place that names the built-in plugins.
enum Builtins {
  static func registry() -> PluginRegistry {
    let registry = PluginRegistry()
    registry.registerKernels("cpu") { threads, memory in CPUKernels(threads: threads, memory: memory) }
    registry.registerKernels("reference") { _, memory in ReferenceKernels(memory: memory) }
    registry.registerPartitioner("memory-greedy") { MemoryGreedyPartitioner() }
    registry.registerPartitioner("balanced") { BalancedPartitioner() }
    registry.registerPartitioner("fixed") { FixedPartitioner() }
    return registry
  }

  /// What `job.toml` may name. Multi-device scheduling arrives with its plugins; until then
  /// devices train whole models, one after another (`sequential`).
  static func known(_ registry: PluginRegistry) -> KnownPlugins {
    KnownPlugins(
      backends: ["shm"], kernels: registry.kernelsNames, partitioners: registry.partitionerNames,
      schedulers: ["sequential"], defaultPartitioner: "balanced", defaultScheduler: "sequential")
  }
}
