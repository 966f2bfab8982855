import HydraBackendMPI
import HydraBackendSHM
import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraKernelsReference
import HydraPartitioners
import HydraRuntime
import HydraSchedulers

/// The one place that names the built-in plugins.
enum Builtins {
  static func registry() -> PluginRegistry {
    let registry = PluginRegistry()
    registry.registerKernels("cpu") { threads, memory in CPUKernels(threads: threads, memory: memory) }
    registry.registerKernels("reference") { _, memory in ReferenceKernels(memory: memory) }
    registry.registerPartitioner("memory-greedy") { MemoryGreedyPartitioner() }
    registry.registerPartitioner("balanced") { BalancedPartitioner() }
    registry.registerPartitioner("fixed") { FixedPartitioner() }
    registerBuiltinSchedulers(in: registry)
    registry.registerBackend("shm") { devices in SharedMemoryBackend(devices: devices) }
    // One device per rank: `devices` is checked against the ranks by the runtime.
    registry.registerBackend("mpi") { _ in try DistributedRuntime(transport: try MPITransport.start()) }
    return registry
  }

  /// What `job.toml` may name.
  static func known(_ registry: PluginRegistry) -> KnownPlugins {
    KnownPlugins(
      backends: registry.backendNames, kernels: registry.kernelsNames, partitioners: registry.partitionerNames,
      schedulers: registry.schedulerNames, defaultPartitioner: "balanced", defaultScheduler: "lrtf")
  }
}
