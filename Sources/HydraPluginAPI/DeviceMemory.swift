import Foundation

/// The allocator accounting of one device: every tensor a device holds is charged here, so that a
/// budget (`[cluster] device_memory`) can be enforced and the peak reported.
///
/// A device's memory has two levels. The device itself (`budget` = `device_memory`) holds shard
/// states and, while a task runs, one lump: the task's **working set**, a child `DeviceMemory`
/// opened with the bytes the task was planned to need (`open`) and closed when it ends. Everything
/// the task allocates (activations, scratch, the tensors it receives and sends) is charged to the
/// working set, so a prefetch running beside the task can never take room the task counts on, and
/// the working set's peak is the task's measured need, to the byte.
public final class DeviceMemory: @unchecked Sendable {
  public let label: String
  /// The device this is the working set of; nil for a device (or a host store) itself.
  public let parent: DeviceMemory?
  private let lock = NSLock()
  private var _budget: Int
  private var _used = 0
  private var _peak = 0
  private var _buffers: DeviceBuffers?

  /// Where tensors charged here keep their bytes: the device plugin's memory, or nil for host RAM
  /// (the host store, and every device whose plugin computes on host memory). A working set's are
  /// its device's.
  public var buffers: DeviceBuffers? { parent?.buffers ?? _buffers }

  /// Puts the bytes of tensors charged to this memory (a device: its working set follows) in
  /// `buffers`. A kernels plugin with device memory of its own calls this when it is made, before
  /// anything is allocated.
  public func place(in buffers: DeviceBuffers) {
    if let parent { return parent.place(in: buffers) }
    _buffers = buffers
  }

  /// A device (or host store) holding at most `budget` bytes; `Int.max` for no limit.
  public init(budget: Int = .max, label: String = "device") {
    _budget = budget
    self.label = label
    parent = nil
  }

  /// The working set of `device`: holds nothing until `open`ed.
  public init(workingSetOf device: DeviceMemory) {
    _budget = 0
    label = device.label
    parent = device
  }

  /// Bytes this memory may hold at once (a working set: the bytes it was opened with).
  public var budget: Int { lock.lock(); defer { lock.unlock() }; return _budget }
  public var used: Int { lock.lock(); defer { lock.unlock() }; return _used }
  public var peak: Int { lock.lock(); defer { lock.unlock() }; return _peak }

  /// Charges `bytes`, or throws without charging when the budget would be exceeded.
  public func reserve(_ bytes: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    if bytes > _budget - _used {
      throw DeviceMemoryError(
        label: label, requested: bytes, used: _used, budget: _budget, workingSet: parent != nil)
    }
    _used += bytes
    _peak = max(_peak, _used)
  }

  public func release(_ bytes: Int) {
    lock.lock()
    _used -= bytes
    lock.unlock()
  }

  public func resetPeak() {
    lock.lock()
    _peak = _used
    lock.unlock()
  }

  /// A working set: takes `bytes` of the device for one task, and starts its peak afresh.
  /// Throws, taking nothing, when the device has no room.
  public func open(_ bytes: Int) throws {
    guard let parent else { preconditionFailure("open: \(label) is a device, not a working set") }
    try parent.reserve(bytes)
    lock.lock()
    _budget = bytes
    _peak = _used
    lock.unlock()
  }

  /// A working set: gives its bytes back to the device. Returns the bytes still charged to it
  /// (0 unless a tensor of the task outlived it: a bug the caller reports).
  @discardableResult
  public func close() -> Int {
    guard let parent else { preconditionFailure("close: \(label) is a device, not a working set") }
    lock.lock()
    let bytes = _budget
    let left = _used
    _budget = 0
    lock.unlock()
    parent.release(bytes)
    return left
  }
}

public struct DeviceMemoryError: Error, CustomStringConvertible {
  public let label: String
  public let requested: Int
  public let used: Int
  public let budget: Int
  /// True when the budget was a task's planned working set (the plan was wrong: a bug).
  public let workingSet: Bool
  public init(label: String, requested: Int, used: Int, budget: Int, workingSet: Bool = false) {
    self.label = label
    self.requested = requested
    self.used = used
    self.budget = budget
    self.workingSet = workingSet
  }
  public var description: String {
    workingSet
      ? "\(label): a task allocating \(formatBytes(requested)) would exceed its planned working set of "
        + "\(formatBytes(budget)) (\(formatBytes(used)) in use): the footprint model missed an allocation"
      : "\(label): allocating \(formatBytes(requested)) would exceed the device budget of "
        + "\(formatBytes(budget)) (\(formatBytes(used)) in use)"
  }
}

/// 1536 -> "1.5 KiB"; used in messages a user reads.
public func formatBytes(_ bytes: Int) -> String {
  if bytes == .max { return "unlimited" }
  let units = ["B", "KiB", "MiB", "GiB", "TiB"]
  var value = Double(bytes)
  var unit = 0
  while value >= 1024, unit < units.count - 1 {
    value /= 1024
    unit += 1
  }
  return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}
