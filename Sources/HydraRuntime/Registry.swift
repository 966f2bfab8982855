import HydraConfig
import HydraCore

/// Makes the kernels of one device: its compute threads and its memory accounting.
public typealias KernelsFactory = @Sendable (_ threads: Int, _ memory: DeviceMemory) throws -> Kernels

/// Makes a scheduler from its `[scheduler]` options and the job's seed.
public typealias SchedulerFactory = @Sendable (_ options: [String: ConfigValue], _ seed: UInt64) throws -> Scheduler

/// Where a registered plugin comes from: built in, or a shared library loaded through the C ABI.
public struct PluginOrigin: Sendable, Equatable {
  public enum Kind: String, Sendable, CaseIterable { case backend, kernels, partitioner, scheduler, selection }
  public var kind: Kind
  public var name: String
  /// The library's absolute path.
  public var file: String
  /// The C ABI version the library was built against.
  public var abiVersion: Int
  /// The library's size and a hash of its bytes: ranks that loaded different files disagree.
  public var fingerprint: String
  public init(kind: Kind, name: String, file: String, abiVersion: Int, fingerprint: String) {
    self.kind = kind
    self.name = name
    self.file = file
    self.abiVersion = abiVersion
    self.fingerprint = fingerprint
  }
}

/// The one registry of plugins, keyed by the names `job.toml` uses: immutable once built, so any
/// thread may read it. Built-ins are registered by `Builtins.registry()`; shared libraries loaded
/// through the C ABI register through the same `Builder` (`PluginLoader`).
public struct PluginRegistry: Sendable {
  public let kernels: [String: KernelsFactory]
  public let partitioners: [String: @Sendable () -> Partitioner]
  public let schedulers: [String: SchedulerFactory]
  public let backends: [String: @Sendable (_ devices: Int) throws -> Backend]
  public let selections: [String: @Sendable () -> Selection]
  /// The plugins loaded from shared libraries, in the order registered; every other name is built in.
  public let loaded: [PluginOrigin]

  /// Collects registrations; a name registered twice for one kind of plugin is an error.
  public struct Builder {
    var kernels: [String: KernelsFactory] = [:]
    var partitioners: [String: @Sendable () -> Partitioner] = [:]
    var schedulers: [String: SchedulerFactory] = [:]
    var backends: [String: @Sendable (_ devices: Int) throws -> Backend] = [:]
    var selections: [String: @Sendable () -> Selection] = [:]
    var loaded: [PluginOrigin] = []

    public init() {}

    /// Whether `name` is registered for `kind` already, and by which library (nil: built in).
    public func registered(_ kind: PluginOrigin.Kind, _ name: String) -> (found: Bool, file: String?) {
      let found: Bool
      switch kind {
      case .backend: found = backends[name] != nil
      case .kernels: found = kernels[name] != nil
      case .partitioner: found = partitioners[name] != nil
      case .scheduler: found = schedulers[name] != nil
      case .selection: found = selections[name] != nil
      }
      return (found, loaded.first { $0.kind == kind && $0.name == name }?.file)
    }

    /// Records that the plugin registered (or about to be) under `origin.name` came from a library.
    public mutating func note(_ origin: PluginOrigin) { loaded.append(origin) }

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
    public mutating func registerSelection(_ name: String, _ factory: @escaping @Sendable () -> Selection) throws {
      try Self.unique("selection", name, in: selections.keys)
      selections[name] = factory
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
    selections = b.selections
    loaded = b.loaded
  }

  /// The library a plugin was loaded from, or nil for a built-in (or unknown) one.
  public func origin(_ kind: PluginOrigin.Kind, _ name: String) -> PluginOrigin? {
    loaded.first { $0.kind == kind && $0.name == name }
  }

  /// The loaded libraries as every rank of a job must see them: paths, sizes and hashes, in order.
  public var loadedFingerprint: String {
    loaded.map { "\($0.kind.rawValue) \($0.name) \($0.file) \($0.fingerprint)" }.joined(separator: "\n")
  }

  public var backendNames: [String] { backends.keys.sorted() }
  public var kernelsNames: [String] { kernels.keys.sorted() }
  public var schedulerNames: [String] { schedulers.keys.sorted() }
  public var partitionerNames: [String] { partitioners.keys.sorted() }
  public var selectionNames: [String] { selections.keys.sorted() }

  public func makeSelection(_ name: String) throws -> Selection {
    guard let factory = selections[name] else {
      throw RuntimeError(
        "selection \"\(name)\" is not registered; registered: \(selectionNames.joined(separator: ", "))")
    }
    return factory()
  }

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
