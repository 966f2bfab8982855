import Foundation

/// The allocator accounting of one device: every tensor a device holds is charged here, so that a
/// budget (`[cluster] device_memory`) can be enforced and the peak reported.
public final class DeviceMemory: @unchecked Sendable {
  /// Bytes this device may hold at once; `Int.max` for no limit.
  public let budget: Int
  public let label: String
  private let lock = NSLock()
  private var _used = 0
  private var _peak = 0

  public init(budget: Int = .max, label: String = "device") {
    self.budget = budget
    self.label = label
  }

  public var used: Int { lock.lock(); defer { lock.unlock() }; return _used }
  public var peak: Int { lock.lock(); defer { lock.unlock() }; return _peak }

  /// Charges `bytes`, or throws without charging when the budget would be exceeded.
  public func reserve(_ bytes: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    if bytes > budget - _used {
      throw DeviceMemoryError(
        label: label, requested: bytes, used: _used, budget: budget)
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
}

public struct DeviceMemoryError: Error, CustomStringConvertible {
  public let label: String
  public let requested: Int
  public let used: Int
  public let budget: Int
  public init(label: String, requested: Int, used: Int, budget: Int) {
    self.label = label
    self.requested = requested
    self.used = used
    self.budget = budget
  }
  public var description: String {
    "\(label): allocating \(formatBytes(requested)) would exceed the device budget of "
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
