import HydraConfig
import HydraCore

/// Makes the kernels of one device: its compute threads and its memory accounting.
public typealias KernelsFactory = @Sendable (_ threads: Int, _ memory: DeviceMemory) throws -> Kernels

/// Makes a scheduler from its `[scheduler]` options and the job's seed.
public typealias SchedulerFactory = @Sendable (_ options: [String: ConfigValue], _ seed: UInt64) throws -> Scheduler

/// The one registry of plugins, keyed by the names `job.toml` uses: immutable once built, so any
/// thread may read it. Built-ins are registered by `Builtins.registry()`; shared libraries loaded
/// through the C ABI will register through the same `Builder`.
public struct PluginRegistry: Sendable {
  public let kernels: [String: KernelsFactory]
  public let partitioners: [String: @Sendable () -> Partitioner]
  public let schedulers: [String: SchedulerFactory]
  public let backends: [String: @Sendable (_ devices: Int) throws -> Backend]

  /// Collects registrations; a name registered twice for one kind of plugin is an error.
  public struct Builder {
    var kernels: [String: KernelsFactory] = [:]
    var partitioners: [String: @Sendable () -> Partitioner] = [:]
    var schedulers: [String: SchedulerFactory] = [:]
    var backends: [String: @Sendable (_ devices: Int) throws -> Backend] = [:]

    public init() {}

    private static func unique(_ kind: String, _ name: String, in names: some Collection<String>) throws {
      guard !names.contains(name) else { throw RuntimeError("\(kind) \"\(name)\" is registered twice") }
    }
    public mutating func registerKernels(_ name: String, _ factory: @escaping KernelsFactory) throws {
      try Self.unique("kernels", name, in: kernels.keys)
      kernels[name] = factory
    }
    public mutating func registerPartitioner(_ name: String, _ factory: @escaping @Sendable () -> Partitioner) throws {
      try Self.unique("partitioner", name, in: partitioners.keys)
      partitioners[name] = factory
    }
    public mutating func registerScheduler(_ name: String, _ factory: @escaping SchedulerFactory) throws {
      try Self.unique("scheduler", name, in: schedulers.keys)
      schedulers[name] = factory
    }
    public mutating func registerBackend(
      _ name: String, _ factory: @escaping @Sendable (_ devices: Int) throws -> Backend
    ) throws {
      try Self.unique("backend", name, in: backends.keys)
      backends[name] = factory
    }
  }

  /// The registry of what `register` registers.
  public init(_ register: (inout Builder) throws -> Void) rethrows {
    var b = Builder()
    try register(&b)
    kernels = b.kernels
    partitioners = b.partitioners
    schedulers = b.schedulers
    backends = b.backends
  }

  public var backendNames: [String] { backends.keys.sorted() }
  public var kernelsNames: [String] { kernels.keys.sorted() }
  public var schedulerNames: [String] { schedulers.keys.sorted() }
  public var partitionerNames: [String] { partitioners.keys.sorted() }

  public func makeBackend(_ name: String, devices: Int) throws -> Backend {
    guard let factory = backends[name] else {
      throw RuntimeError("backend \"\(name)\" is not registered; registered: \(backendNames.joined(separator: ", "))")
    }
    return try factory(devices)
  }

  public func makeScheduler(_ name: String, options: [String: ConfigValue], seed: UInt64) throws -> Scheduler {
    guard let factory = schedulers[name] else {
      throw RuntimeError(
        "scheduler \"\(name)\" is not registered; registered: \(schedulerNames.joined(separator: ", "))")
    }
    return try factory(options, seed)
  }

  public func makePartitioner(_ name: String) throws -> Partitioner {
    guard let factory = partitioners[name] else {
      throw RuntimeError(
        "partitioner \"\(name)\" is not registered; registered: \(partitionerNames.joined(separator: ", "))")
    }
    return factory()
  }

  public func makeKernels(_ name: String, threads: Int, memory: DeviceMemory) throws -> Kernels {
    guard let factory = kernels[name] else {
      throw RuntimeError("kernels \"\(name)\" is not registered; registered: \(kernelsNames.joined(separator: ", "))")
    }
    return try factory(threads, memory)
  }
}
