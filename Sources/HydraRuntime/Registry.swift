import HydraConfig
import HydraCore

/// Makes the kernels of one device: its compute threads and its memory accounting.
public typealias KernelsFactory = @Sendable (_ threads: Int, _ memory: DeviceMemory) throws -> Kernels

/// Makes a scheduler from its `[scheduler]` options and the job's seed.
public typealias SchedulerFactory = @Sendable (_ options: [String: ConfigValue], _ seed: UInt64) throws -> Scheduler

/// The one registry of plugins, keyed by the names `job.toml` uses. Built-ins are registered by the
/// command-line tool at start-up; shared libraries loaded through the C ABI will register here too.
public final class PluginRegistry: @unchecked Sendable {
  public private(set) var kernels: [String: KernelsFactory] = [:]
  public private(set) var partitioners: [String: @Sendable () -> Partitioner] = [:]
  public private(set) var schedulers: [String: SchedulerFactory] = [:]
  public private(set) var backends: [String: @Sendable (_ devices: Int) throws -> Backend] = [:]

  public func registerBackend(_ name: String, _ factory: @escaping @Sendable (_ devices: Int) throws -> Backend) {
    backends[name] = factory
  }

  public var backendNames: [String] { backends.keys.sorted() }

  public func makeBackend(_ name: String, devices: Int) throws -> Backend {
    guard let factory = backends[name] else {
      throw RuntimeError("backend \"\(name)\" is not registered; registered: \(backendNames.joined(separator: ", "))")
    }
    return try factory(devices)
  }

  public init() {}

  public func registerKernels(_ name: String, _ factory: @escaping KernelsFactory) {
    kernels[name] = factory
  }

  public var kernelsNames: [String] { kernels.keys.sorted() }

  public func registerScheduler(_ name: String, _ factory: @escaping SchedulerFactory) {
    schedulers[name] = factory
  }

  public var schedulerNames: [String] { schedulers.keys.sorted() }

  public func makeScheduler(_ name: String, options: [String: ConfigValue], seed: UInt64) throws -> Scheduler {
    guard let factory = schedulers[name] else {
      throw RuntimeError(
        "scheduler \"\(name)\" is not registered; registered: \(schedulerNames.joined(separator: ", "))")
    }
    return try factory(options, seed)
  }

  public func registerPartitioner(_ name: String, _ factory: @escaping @Sendable () -> Partitioner) {
    partitioners[name] = factory
  }

  public var partitionerNames: [String] { partitioners.keys.sorted() }

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

/// A failure that is not the user's input: exits 1.
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}
