/// The plugin names registered with the runtime, against which `job.toml` names are checked.
public struct KnownPlugins: Sendable, Equatable {
  public var backends: [String]
  public var kernels: [String]
  public var partitioners: [String]
  public var schedulers: [String]
  public var selections: [String]
  /// What a job without `[partitioner] name` / `[scheduler] name` gets.
  public var defaultPartitioner: String
  public var defaultScheduler: String

  public init(
    backends: [String], kernels: [String], partitioners: [String], schedulers: [String],
    selections: [String] = ["none"], defaultPartitioner: String = "balanced", defaultScheduler: String = "lrtf"
  ) {
    self.selections = selections
    self.backends = backends
    self.kernels = kernels
    self.partitioners = partitioners
    self.schedulers = schedulers
    self.defaultPartitioner = defaultPartitioner
    self.defaultScheduler = defaultScheduler
  }
}
