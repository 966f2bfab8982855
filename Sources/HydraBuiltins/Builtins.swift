import HydraBackendMPI
import HydraBackendSHM
import HydraConfig
import HydraCore
import HydraKernelsCPU
import HydraKernelsDiscrete
import HydraKernelsReference
import HydraPartitioners
import HydraPluginLoader
import HydraRuntime
import HydraSchedulers
import HydraSelection

/// The one place that names the built-in plugins, shared by the tool, the benchmarks and the tests.
public enum Builtins {
  public static func registry() -> PluginRegistry {
    // Built-in names are distinct: registering them cannot fail.
    try! PluginRegistry { try register(into: &$0) }
  }

  /// The built-ins and then the plugins of the libraries at `paths` (`[plugins] load`, in order).
  /// A library that cannot be loaded, or a name it registers twice, is bad input naming the file.
  public static func registry(loading paths: [String]) throws -> PluginRegistry {
    try PluginRegistry { registry in
      try register(into: &registry)
      try PluginLoader.load(paths, into: &registry)
    }
  }

  static func register(into registry: inout PluginRegistry.Builder) throws {
    try registry.registerKernels("cpu") { threads, memory in CPUKernels(threads: threads, memory: memory) }
    try registry.registerKernels("reference") { _, memory in ReferenceKernels(memory: memory) }
    try registry.registerKernels("discrete") { threads, memory in DiscreteKernels(threads: threads, memory: memory) }
    try registry.registerPartitioner("memory-greedy") { MemoryGreedyPartitioner() }
    try registry.registerPartitioner("balanced") { BalancedPartitioner() }
    try registry.registerPartitioner("fixed") { FixedPartitioner() }
    for name in builtinSchedulerNames {
      try registry.registerScheduler(name) { options, seed in
        try makeBuiltinScheduler(name, options: options, seed: seed)
      }
    }
    for name in builtinSelectionNames {
      try registry.registerSelection(name) { makeBuiltinSelection(name)! }
    }
    try registry.registerBackend("shm") { devices in SharedMemoryBackend(devices: devices) }
    // One device per rank: `devices` is checked against the ranks by the runtime.
    try registry.registerBackend("mpi") { _ in try DistributedRuntime(transport: try MPITransport.start()) }
  }

  /// What `job.toml` may name.
  public static func known(_ registry: PluginRegistry = registry()) -> KnownPlugins {
    KnownPlugins(
      backends: registry.backendNames, kernels: registry.kernelsNames, partitioners: registry.partitionerNames,
      schedulers: registry.schedulerNames, selections: registry.selectionNames, defaultPartitioner: "balanced",
      defaultScheduler: "lrtf")
  }
}
